//! Unwinding a thread's user stack from its registers and stack memory, with each object's
//! DWARF call-frame information (`framehop`; frame pointers where an object has none).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use dprobe_sym::{read_maps_of, Mapping};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::Unwinder as _;

use crate::elf::{Bytes, ElfFile};

/// The registers unwinding starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegs {
    /// Where the thread is.
    pub ip: u64,
    /// Its stack pointer.
    pub sp: u64,
    /// Its frame pointer (for code without call-frame information).
    pub bp: u64,
}

/// How the unwinder reads the thread's stack: one 8-byte word at an address, `None` where
/// nothing can be read. An engine answers a slot that a return probe hijacked with the real
/// return address.
pub trait StackMemory {
    /// The word at `addr`.
    fn word(&mut self, addr: u64) -> Option<u64>;
}

impl<F: FnMut(u64) -> Option<u64>> StackMemory for F {
    fn word(&mut self, addr: u64) -> Option<u64> {
        self(addr)
    }
}

/// One process as the unwinder knows it.
struct Process {
    /// Every mapping, in address order: an address in none of them means the maps changed.
    mapped: Vec<Range<u64>>,
    unwinder: UnwinderX86_64<Bytes>,
}

impl Process {
    fn knows(&self, addr: u64) -> bool {
        let i = self.mapped.partition_point(|r| r.end <= addr);
        self.mapped.get(i).is_some_and(|r| r.start <= addr)
    }
}

/// Unwinds stacks of any process, keeping each object's unwind sections and each process's
/// modules between stacks.
#[derive(Default)]
pub struct Unwinder {
    files: HashMap<String, Option<Arc<ElfFile>>>,
    processes: HashMap<u32, Process>,
    cache: Option<Box<CacheX86_64>>,
}

impl Unwinder {
    /// An unwinder that knows nothing yet.
    pub fn new() -> Unwinder {
        Unwinder::default()
    }

    /// Unwind the stack of a thread of `pid` stopped at `regs`, reading its memory through
    /// `memory`: `out` gets at most `depth` addresses, innermost first (`regs.ip`, then
    /// return addresses).
    pub fn unwind(&mut self, pid: u32, regs: UserRegs, memory: &mut dyn StackMemory, depth: usize, out: &mut Vec<u64>) {
        self.unwind_in(pid, pid, regs, memory, depth, out);
    }

    /// [`Unwinder::unwind`], with the maps of process `maps_of` where `pid`'s can no longer
    /// be read: a forked child that has not executed another program (its maps were its
    /// parent's) and has ended since its stack was copied.
    pub fn unwind_in(
        &mut self,
        pid: u32,
        maps_of: u32,
        regs: UserRegs,
        memory: &mut dyn StackMemory,
        depth: usize,
        out: &mut Vec<u64>,
    ) {
        out.clear();
        if depth == 0 {
            return;
        }
        let pid = match maps_of != pid && !self.processes.contains_key(&pid) && !self.refresh(pid) {
            true => maps_of,
            false => pid,
        };
        if !self.processes.get(&pid).is_some_and(|p| p.knows(regs.ip)) {
            self.refresh(pid);
        }
        self.walk(pid, regs, memory, depth, out);
        // A caller in an object loaded since the maps were read (dlopen): read them again
        // and unwind once more, with its call-frame information.
        let stale = out.iter().any(|&a| !self.processes.get(&pid).is_some_and(|p| p.knows(a)));
        if stale && self.refresh(pid) {
            self.walk(pid, regs, memory, depth, out);
        }
    }

    /// Read the maps of `pid` and the unwind sections of its objects now, while it is there
    /// to read (an engine whose events come after the fact: the first stack then costs no
    /// file reads).
    pub fn prepare(&mut self, pid: u32) {
        self.refresh(pid);
    }

    /// Forget a process (it ended, or executed another program).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    fn walk(&mut self, pid: u32, regs: UserRegs, memory: &mut dyn StackMemory, depth: usize, out: &mut Vec<u64>) {
        out.clear();
        let Some(process) = self.processes.get(&pid) else {
            out.push(regs.ip);
            return;
        };
        let cache = self.cache.get_or_insert_with(|| Box::new(CacheX86_64::new()));
        let mut read = |addr: u64| memory.word(addr).ok_or(());
        let start = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut frames = process.unwinder.iter_frames(regs.ip, start, cache, &mut read);
        while out.len() < depth {
            match frames.next() {
                Ok(Some(frame)) => out.push(frame.address()),
                _ => break,
            }
        }
    }

    /// Read the maps of `pid` again and rebuild its modules; `false` when they cannot be read
    /// or did not change.
    fn refresh(&mut self, pid: u32) -> bool {
        // (A process that has ended and not been waited for has no maps: none are kept.)
        let Some(maps) = read_maps_of(pid).ok().filter(|m| !m.is_empty()) else { return false };
        let mapped: Vec<Range<u64>> = maps.iter().map(|m| m.start.0..m.end.0).collect();
        if self.processes.get(&pid).is_some_and(|p| p.mapped == mapped) {
            return false;
        }
        let mut unwinder = UnwinderX86_64::new();
        for (path, avma) in objects(&maps) {
            let file = self.files.entry(path.to_owned()).or_insert_with(|| ElfFile::read(path).map(Arc::new));
            let Some(file) = file else { continue };
            let Some(first) = maps.iter().find(|m| m.path.as_deref() == Some(path) && m.offset == 0) else {
                continue;
            };
            let bias = first.start.0.wrapping_sub(file.link_base);
            unwinder.add_module(file.module(avma, bias));
        }
        self.processes.insert(pid, Process { mapped, unwinder });
        true
    }
}

/// Each file mapped with code, and the range its mappings cover.
fn objects(maps: &[Mapping]) -> Vec<(&str, Range<u64>)> {
    let mut out: Vec<(&str, Range<u64>)> = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let Some(path) = m.path.as_deref().filter(|p| p.starts_with('/')) else { continue };
        if !own_mapping(maps, i, path) {
            continue;
        }
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, r)) => {
                r.start = r.start.min(m.start.0);
                r.end = r.end.max(m.end.0);
            }
            None => out.push((path, m.start.0..m.end.0)),
        }
    }
    out.retain(|(path, r)| maps.iter().any(|m| m.exec && m.path.as_deref() == Some(*path) && r.contains(&m.start.0)));
    out
}

/// Whether `maps[i]`, a mapping of `path`, is part of the object as loaded: in the run of
/// mappings that starts at a mapping of its first page and holds no other file's mapping,
/// the longest such run. A page of its file mapped elsewhere (the agent's read-only alias of
/// a code page it holds writable) would stretch the object's range over other objects'.
/// (Segments are not all at one bias from their file offsets: a linker may leave gaps.)
fn own_mapping(maps: &[Mapping], i: usize, path: &str) -> bool {
    let ours = |m: &Mapping| m.path.as_deref() == Some(path);
    let run = |first: usize| {
        let len = maps[first..].iter().take_while(|m| m.path.as_deref().is_none_or(|p| ours(m) || !p.starts_with('/')));
        first..first + len.count()
    };
    let firsts = maps.iter().enumerate().filter(|(_, m)| ours(m) && m.offset == 0).map(|(k, _)| run(k));
    match firsts.max_by_key(|r| maps[r.clone()].iter().filter(|m| ours(m)).count()) {
        Some(loaded) => loaded.contains(&i),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_an_object_mapped_elsewhere_is_not_part_of_its_range() {
        // libc loaded at 0x7f10000000 with a code page held writable, a read-only alias of
        // that page mapped below, under another object, as the agent does.
        let maps = dprobe_sym::parse_maps(
            "7f00000000-7f00001000 r--p 0003c000 fe:00 7 /lib/libc.so.6\n\
             7f00100000-7f00200000 r-xp 00000000 00:01 9 /memfd:agent (deleted)\n\
             7f10000000-7f10026000 r--p 00000000 fe:00 7 /lib/libc.so.6\n\
             7f10026000-7f1003c000 r-xp 00026000 fe:00 7 /lib/libc.so.6\n\
             7f1003c000-7f1003d000 rwxp 0003c000 fe:00 7 /lib/libc.so.6\n\
             7f1003d000-7f10100000 r-xp 0003d000 fe:00 7 /lib/libc.so.6\n",
        );
        let found = objects(&maps);
        assert_eq!(
            found,
            vec![
                ("/memfd:agent (deleted)", 0x7f00100000..0x7f00200000),
                ("/lib/libc.so.6", 0x7f10000000..0x7f10100000)
            ]
        );
    }

    #[test]
    fn an_alias_of_an_objects_first_page_is_not_taken_for_where_it_is_loaded() {
        // A program whose code starts in its first page, that page's alias above it.
        let maps = dprobe_sym::parse_maps(
            "5500000000-5500003000 r-xp 00000000 fe:00 5 /bin/prog\n\
             5500003000-5500004000 rw-p 00003000 fe:00 5 /bin/prog\n\
             7f00100000-7f00200000 r-xp 00000000 00:01 9 /lib/other.so\n\
             7f00300000-7f00301000 r--p 00000000 fe:00 5 /bin/prog\n",
        );
        let found = objects(&maps);
        assert_eq!(
            found,
            vec![("/bin/prog", 0x5500000000..0x5500004000), ("/lib/other.so", 0x7f00100000..0x7f00200000)]
        );
    }
}
