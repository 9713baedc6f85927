//! `dprobe list` at a function's entry: how a return probe would watch its returns, at every
//! exit (each `ret`, each tail call), or through the return address, and why; with the
//! ptrace engine and with the kernel engine (whose uprobes the kernel places from the file).

use std::fs::File;
use std::os::unix::fs::FileExt;

use dprobe_arch::{find_exits, Addr, CodePart, Memory, MemoryFault};
use dprobe_sym::{Function, Symbols};

/// Where the bytes of the listed code are: the process's memory, or the file's loadable
/// segments at its link-time addresses.
pub enum Image<'a> {
    /// `/proc/PID/mem`.
    Process(&'a File),
    /// The ELF file, with its `PT_LOAD` segments: (address, bytes in the file, file offset).
    File(&'a File, Vec<(u64, u64, u64)>),
}

impl<'a> Image<'a> {
    /// The file's image (its segments read from its program headers).
    pub fn file(file: &'a File) -> std::io::Result<Image<'a>> {
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0)?;
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if &header[..4] != b"\x7fELF" || header[4] != 2 {
            return Err(std::io::Error::other("not a 64-bit ELF file"));
        }
        let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
        let mut segments = Vec::new();
        for k in 0..phnum {
            let mut ph = [0u8; 56];
            file.read_exact_at(&mut ph, phoff + k * phentsize)?;
            if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == 1 {
                segments.push((u64_at(&ph, 16), u64_at(&ph, 32), u64_at(&ph, 8)));
            }
        }
        Ok(Image::File(file, segments))
    }

    fn code(&self, f: &Function) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; f.size as usize];
        match self {
            Image::Process(mem) => mem.read_exact_at(&mut buf, f.start.0)?,
            Image::File(file, _) => file.read_exact_at(&mut buf, f.file_offset)?,
        }
        Ok(buf)
    }
}

impl Memory for Image<'_> {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { addr, len: buf.len(), write: false };
        match self {
            Image::Process(mem) => mem.read_exact_at(buf, addr.0).map_err(|_| fault),
            Image::File(file, segments) => {
                let &(start, _, offset) = segments
                    .iter()
                    .find(|(start, size, _)| addr.0 >= *start && addr.0 + buf.len() as u64 <= start + size)
                    .ok_or(fault)?;
                file.read_exact_at(buf, offset + (addr.0 - start)).map_err(|_| fault)
            }
        }
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}

/// How return probes on `f` watch its returns, in words.
pub fn return_mode(symbols: &Symbols, image: &mut Image<'_>, f: &Function) -> String {
    let cold = symbols.cold_part(f);
    let parts: Vec<&Function> = std::iter::once(f).chain(cold).collect();
    let code: std::io::Result<Vec<Vec<u8>>> = parts.iter().map(|p| image.code(p)).collect();
    let code = match code {
        Ok(code) => code,
        Err(e) => return format!("through the return address: its code cannot be read ({e})"),
    };
    let parts: Vec<CodePart<'_>> = parts.iter().zip(&code).map(|(p, c)| CodePart { start: p.start, code: c }).collect();
    match find_exits(&parts, image) {
        Ok(exits) => {
            let n = exits.sites.len();
            let cold = if parts.len() > 1 { ", its cold part included" } else { "" };
            format!(
                "at its {n} exit{} (ret, tail calls{cold}): the stack is not touched",
                if n == 1 { "" } else { "s" }
            )
        }
        Err(why) => format!("through the return address, because its exits are not all known: {why}"),
    }
}

/// How the kernel engine's return probes on `f` (in the file at `path`) watch its returns,
/// in words.
pub fn kernel_return_mode(path: &str, f: &Function) -> String {
    match dprobe_kernel::return_plan(path, &f.name) {
        Ok(plan) if plan.tail_calls() => match dprobe_kernel::tail_call_hops(&plan, &|_| false) {
            Ok(hops) => format!(
                "{}; a $retval or --latency at a tail call is read where the callee returns, at the exits of {}",
                plan.watched_at(),
                hops.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            Err(why) => format!(
                "{}; with a $retval or --latency, through the return address (a uretprobe): {why}",
                plan.watched_at()
            ),
        },
        Ok(plan) => plan.watched_at(),
        Err(why) => format!("through the return address (a uretprobe): {why}"),
    }
}
