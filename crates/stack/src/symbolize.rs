//! Addresses of a stack as functions: the function and the offset into it (from the
//! object's symbols), and where the object has DWARF the source `file:line` and the calls
//! the compiler inlined there, each a frame of its own.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use dprobe_dwarf::{DebugInfo, Reader};
use dprobe_sym::{read_maps_of, Mapping, Symbols};

use crate::kernel::KernelSymbols;

/// One frame of a symbolized stack. An address gives one frame, or several where calls were
/// inlined there: the inlined ones first (innermost first), the function that holds the
/// code last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The function (demangled), when known.
    pub function: Option<String>,
    /// The address's offset from the function's first instruction (not for inlined frames).
    pub offset: Option<u64>,
    /// The object holding the code (a path; a kernel module's name in brackets).
    pub object: Option<Arc<str>>,
    /// The source file and line, from DWARF.
    pub file: Option<String>,
    /// See `file`.
    pub line: Option<u32>,
    /// A call the compiler inlined into the next frame.
    pub inlined: bool,
}

impl Frame {
    fn unknown(object: Option<Arc<str>>) -> Frame {
        Frame { function: None, offset: None, object, file: None, line: None, inlined: false }
    }

    /// The function's name, or the address in hex when it is unknown.
    pub fn name_or(&self, addr: u64) -> String {
        self.function.clone().unwrap_or_else(|| format!("0x{addr:x}"))
    }
}

/// An object's symbols and line tables, at its link-time addresses.
struct ObjectInfo {
    path: Arc<str>,
    link_base: u64,
    symbols: Option<Symbols>,
    lines: Option<addr2line::Context<Reader>>,
}

impl ObjectInfo {
    fn read(path: &str) -> Option<ObjectInfo> {
        use object::{Object, ObjectSegment};
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let link_base = file.segments().find(|s| s.file_range().0 == 0).map(|s| s.address() & !0xfff)?;
        let symbols = Symbols::load_file(path).ok();
        let lines = DebugInfo::load(path)
            .ok()
            .flatten()
            .and_then(|info| addr2line::Context::from_dwarf(info.into_dwarf()).ok());
        Some(ObjectInfo { path: Arc::from(path), link_base, symbols, lines })
    }

    /// The frames at link-time address `at` (`probe`: the address looked up, one before a
    /// return address).
    fn frames(&self, at: u64, probe: u64) -> Vec<Frame> {
        let object = Some(self.path.clone());
        let mut frames = Vec::new();
        if let Some(lines) = &self.lines {
            if let Ok(mut iter) = lines.find_frames(probe).skip_all_loads() {
                while let Ok(Some(f)) = iter.next() {
                    let function = f.function.as_ref().and_then(|n| n.raw_name().ok()).map(|raw| {
                        let raw = raw.into_owned();
                        dprobe_sym::demangle(&raw).unwrap_or(raw)
                    });
                    let (file, line) = f.location.map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
                    frames.push(Frame { function, offset: None, object: object.clone(), file, line, inlined: true });
                }
            }
        }
        let symbol = self.symbols.as_ref().and_then(|s| s.containing(dprobe_arch::Addr(probe)));
        if frames.is_empty() {
            frames.push(Frame::unknown(object));
        }
        let outer = frames.last_mut().expect("one frame at least");
        outer.inlined = false;
        if let Some(f) = symbol {
            outer.function = Some(f.demangled.as_deref().unwrap_or(&f.name).to_owned());
            outer.offset = Some(at - f.start.0);
        }
        frames
    }
}

/// Turns stack addresses into frames, keeping each object's symbols and line tables, each
/// process's maps and each address's frames.
#[derive(Default)]
pub struct Symbolizer {
    objects: HashMap<String, Option<Rc<ObjectInfo>>>,
    maps: HashMap<u32, Vec<Mapping>>,
    known: HashMap<(u32, u64, bool), Rc<[Frame]>>,
    kernel: Option<KernelSymbols>,
}

/// Remembered addresses past which the memo starts again (a long system-wide trace).
const MEMO_LIMIT: usize = 1 << 18;

impl Symbolizer {
    /// A symbolizer that knows nothing yet.
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// The frames at `addr` in process `pid`; `caller`: it is a return address (its call is
    /// the instruction before it).
    pub fn user(&mut self, pid: u32, addr: u64, caller: bool) -> Rc<[Frame]> {
        self.user_in(pid, pid, addr, caller)
    }

    /// [`Symbolizer::user`], with the maps of process `maps_of` where `pid`'s can no longer
    /// be read: a forked child that has not executed another program (its maps were its
    /// parent's) and has ended since the event.
    pub fn user_in(&mut self, pid: u32, maps_of: u32, addr: u64, caller: bool) -> Rc<[Frame]> {
        let pid = match maps_of != pid && !self.maps.contains_key(&pid) {
            // (A process that has ended and not been waited for has no maps.)
            true => match read_maps_of(pid).ok().filter(|m| !m.is_empty()) {
                Some(maps) => {
                    self.maps.insert(pid, maps);
                    pid
                }
                None => maps_of,
            },
            false => pid,
        };
        if let Some(f) = self.known.get(&(pid, addr, caller)) {
            return f.clone();
        }
        let frames: Rc<[Frame]> = self.look_up(pid, addr, caller).into();
        if self.known.len() >= MEMO_LIMIT {
            self.known.clear();
        }
        self.known.insert((pid, addr, caller), frames.clone());
        frames
    }

    /// The frame at kernel address `addr` (from `/proc/kallsyms`, when it shows addresses).
    pub fn kernel(&mut self, addr: u64) -> Frame {
        let kernel = self.kernel.get_or_insert_with(KernelSymbols::load);
        match kernel.find(addr) {
            Some((name, offset, module)) => Frame {
                function: Some(name.to_owned()),
                offset: Some(offset),
                object: Some(module.map_or_else(|| Arc::from("[kernel]"), |m| Arc::from(format!("[{m}]")))),
                file: None,
                line: None,
                inlined: false,
            },
            None => Frame::unknown(Some(Arc::from("[kernel]"))),
        }
    }

    /// Read the maps of `pid`, and the symbols and line tables of each object it has code
    /// in, now, while it is there to read: an engine whose events come after the fact (a
    /// ring of them) then spends no time on file reads at its first stacks.
    pub fn prepare(&mut self, pid: u32) {
        let Ok(maps) = read_maps_of(pid) else { return };
        for m in maps.iter().filter(|m| m.exec) {
            let Some(path) = m.path.clone().filter(|p| p.starts_with('/')) else { continue };
            self.objects.entry(path.clone()).or_insert_with(|| ObjectInfo::read(&path).map(Rc::new));
        }
        self.maps.insert(pid, maps);
    }

    /// Forget a process's maps (it ended, or executed another program).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.known.retain(|k, _| k.0 != pid);
    }

    fn look_up(&mut self, pid: u32, addr: u64, caller: bool) -> Vec<Frame> {
        let mapping = match self.mapping(pid, addr) {
            Some(m) => m,
            None => {
                if let Ok(maps) = read_maps_of(pid) {
                    self.maps.insert(pid, maps);
                }
                match self.mapping(pid, addr) {
                    Some(m) => m,
                    None => return vec![Frame::unknown(None)],
                }
            }
        };
        let Some(path) = mapping.path.clone().filter(|p| p.starts_with('/')) else {
            return vec![Frame::unknown(mapping.path.as_deref().map(Arc::from))];
        };
        let maps = &self.maps[&pid];
        let first = maps.iter().find(|m| m.path.as_deref() == Some(&path) && m.offset == 0).map(|m| m.start.0);
        let info = self.objects.entry(path.clone()).or_insert_with(|| ObjectInfo::read(&path).map(Rc::new));
        let (Some(info), Some(first)) = (info, first) else { return vec![Frame::unknown(Some(Arc::from(path)))] };
        let at = addr.wrapping_sub(first.wrapping_sub(info.link_base));
        info.frames(at, if caller { at.wrapping_sub(1) } else { at })
    }

    fn mapping(&self, pid: u32, addr: u64) -> Option<Mapping> {
        let maps = self.maps.get(&pid)?;
        let i = maps.partition_point(|m| m.end.0 <= addr);
        maps.get(i).filter(|m| m.start.0 <= addr).cloned()
    }
}
