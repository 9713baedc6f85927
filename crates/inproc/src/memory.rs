//! Reading the program's memory from a handler without risking a fault: a bad pointer is an
//! error, not a crash (the non-sleeping, non-faulting read the article's jprobe example
//! should have used instead of `copy_from_user`).

use dprobe_arch::{Addr, MemoryFault};

use crate::sys;

/// Fill `buf` from `addr`. Async-signal-safe (one system call).
pub fn read_bytes(addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
    sys::read_memory(Addr(addr), buf)
}

/// Read a NUL-terminated string at `addr` into `buf`, at most `buf.len()` bytes; returns the
/// bytes before the NUL (or all of `buf` when the string is longer: truncated). Reads page by
/// page, so a short string at the end of a mapping is still read. Async-signal-safe.
pub fn read_c_string(addr: u64, buf: &mut [u8]) -> Result<&[u8], MemoryFault> {
    const PAGE: u64 = 4096;
    let mut done = 0usize;
    while done < buf.len() {
        let at = addr.wrapping_add(done as u64);
        let chunk = ((PAGE - at % PAGE) as usize).min(buf.len() - done);
        if let Err(e) = sys::read_memory(Addr(at), &mut buf[done..done + chunk]) {
            return if done == 0 { Err(e) } else { Err(MemoryFault { addr: Addr(at), ..e }) };
        }
        if let Some(nul) = buf[done..done + chunk].iter().position(|b| *b == 0) {
            return Ok(&buf[..done + nul]);
        }
        done += chunk;
    }
    Ok(&buf[..])
}
