//! Reading the program's memory from a handler without risking a fault: a bad pointer is an
//! error, not a crash (the non-sleeping, non-faulting read the article's jprobe example
//! should have used instead of `copy_from_user`).

use dprobe_arch::{Addr, MemoryFault};

use crate::{guard, handler_masks, sys, thread_state};

/// Fill `buf` from `addr`. Async-signal-safe.
///
/// In dprobe's hit path, where a fault is sure to reach dprobe's handler (its handlers of
/// `SIGSEGV` and `SIGBUS` kept in place by `keep_traps_open`'s guard, neither signal blocked
/// on the thread, the thread not lent to a child that shares the program's memory), the
/// bytes are read directly inside a guarded call, whose fault is this read's error and nothing
/// more (the kernel's `copy_from_user_nofault`): one system call to read the mask, where
/// `process_vm_readv` costs several times more (it pins the pages it reads). Elsewhere, with
/// `process_vm_readv`, which fails where a load would fault.
pub fn read_bytes(addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
    match read_guarded(addr, buf) {
        Some(read) => read,
        None => sys::read_memory(Addr(addr), buf),
    }
}

/// The thread's state, where a fault in a guarded call is sure to be recovered from (see
/// [`read_bytes`]); `None` elsewhere. `blocked`: the thread's signal mask, if the caller
/// knows it (else asked of the kernel).
fn guarded_reads_safe(blocked: Option<u64>) -> Option<&'static thread_state::ThreadState> {
    const FAULTS: u64 = 1 << (libc::SIGSEGV - 1) | 1 << (libc::SIGBUS - 1);
    if !handler_masks::keeps_dprobes_handlers() {
        return None;
    }
    let in_hit_path = |s: &&thread_state::ThreadState| s.in_hit_path.get() > 0 || s.in_handler.get();
    let state = thread_state::existing().filter(in_hit_path).filter(|s| s.lent.get() == 0)?;
    // A fault the thread blocks is not delivered: the kernel kills the process.
    (blocked.unwrap_or_else(sys::signal_mask) & FAULTS == 0).then_some(state)
}

/// Whether a byte of every page from `from` to `to` can be read, asked by reading them inside
/// a guarded call; `None` where a fault would not surely be recovered from (see
/// [`read_bytes`]; `blocked`: the thread's signal mask, if known). Async-signal-safe.
pub(crate) fn pages_readable(from: u64, to: u64, blocked: Option<u64>) -> Option<bool> {
    let state = guarded_reads_safe(blocked)?;
    let touch = || {
        let mut at = from;
        while at < to {
            // SAFETY: a fault here (an unmapped or unreadable page) resumes after the guarded
            // call, which reports it; volatile, so that the byte is read here.
            unsafe { (at as *const u8).read_volatile() };
            at = (at & !4095) + 4096;
        }
    };
    Some(guard::call_guarded_in(Some(state), touch).is_ok())
}

/// [`read_bytes`] inside a guarded call, where a fault is sure to be recovered from.
fn read_guarded(addr: u64, buf: &mut [u8]) -> Option<Result<(), MemoryFault>> {
    let state = guarded_reads_safe(None)?;
    let copy = || {
        let mut i = 0;
        while i < buf.len() {
            let at = addr.wrapping_add(i as u64);
            // Aligned words where they fit (an aligned word never crosses a page), else bytes.
            if at % 8 == 0 && buf.len() - i >= 8 {
                // SAFETY: a fault here (an unmapped or unreadable page) resumes after the
                // guarded call, which reports it; volatile, so that the word is read here.
                let word = unsafe { (at as *const u64).read_volatile() };
                buf[i..i + 8].copy_from_slice(&word.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: as above, for one byte.
                buf[i] = unsafe { (at as *const u8).read_volatile() };
                i += 1;
            }
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
