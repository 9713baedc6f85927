//! Reading the program's memory from a handler without risking a fault: a bad pointer is an
//! error, not a crash (the non-sleeping, non-faulting read the article's jprobe example
//! should have used instead of `copy_from_user`).

use dprobe_arch::{Addr, MemoryFault};

use crate::{guard, signals, sys, thread_state};

/// Fill `buf` from `addr`. Async-signal-safe. In dprobe's hit path (a handler, an event's
/// fetch), with dprobe's handlers of the fault signals installed, the bytes are read directly
/// inside a guarded call, whose fault is this read's error and nothing more (the kernel's
/// `copy_from_user_nofault`): no system call, where each costs several hundred nanoseconds on
/// some machines. Elsewhere, with `process_vm_readv`.
pub fn read_bytes(addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
    match read_guarded(addr, buf) {
        Some(read) => read,
        None => sys::read_memory(Addr(addr), buf),
    }
}

/// [`read_bytes`] inside a guarded call, where one can be made.
fn read_guarded(addr: u64, buf: &mut [u8]) -> Option<Result<(), MemoryFault>> {
    if !signals::installed(libc::SIGSEGV) || !signals::installed(libc::SIGBUS) {
        return None;
    }
    let state = thread_state::existing().filter(|s| s.in_hit_path.get() > 0 || s.in_handler.get())?;
    let copy = || {
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: a fault here (an unmapped or unreadable page) resumes after the guarded
            // call, which reports it; volatile, so that each byte is read where it is.
            *byte = unsafe { (addr.wrapping_add(i as u64) as *const u8).read_volatile() };
        }
    };
    let read = guard::call_guarded_in(Some(state), copy);
    Some(read.map_err(|_| MemoryFault { addr: Addr(addr), len: buf.len(), write: false }))
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
        if let Err(e) = read_bytes(at, &mut buf[done..done + chunk]) {
            return if done == 0 { Err(e) } else { Err(MemoryFault { addr: Addr(at), ..e }) };
        }
        if let Some(nul) = buf[done..done + chunk].iter().position(|b| *b == 0) {
            return Ok(&buf[..done + nul]);
        }
        done += chunk;
    }
    Ok(&buf[..])
}
