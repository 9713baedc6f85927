//! System calls made with the `syscall` instruction itself, for dprobe's code that runs on a
//! program's thread (a probe's handler, a hook the loader calls): the C library's wrappers
//! (`getpid`, `write`, `syscall`...) may be probed, and a call of dprobe's there would count
//! as the program's, or trap inside a handler. Async-signal-safe.

use std::sync::atomic::AtomicU32;

use crate::sys::raw_syscall6;

/// This process's id.
pub fn getpid() -> libc::pid_t {
    crate::sys::own_pid()
}

/// The calling thread's id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no argument and touches no memory.
    unsafe { raw_syscall6(libc::SYS_gettid, [0; 6]) as libc::pid_t }
}

/// `write(fd, bytes)`: the bytes written, or `-errno`.
pub fn write(fd: i32, bytes: &[u8]) -> i64 {
    // SAFETY: write reads `bytes.len()` bytes from a live slice.
    unsafe { raw_syscall6(libc::SYS_write, [fd as u64, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0]) }
}

/// `read(fd, bytes)`: the bytes read, or `-errno`.
pub fn read(fd: i32, bytes: &mut [u8]) -> i64 {
    // SAFETY: read writes at most `bytes.len()` bytes into a live slice.
    unsafe { raw_syscall6(libc::SYS_read, [fd as u64, bytes.as_mut_ptr() as u64, bytes.len() as u64, 0, 0, 0]) }
}

/// Wake every thread waiting on `word` (`private`: only this process's threads wait on it).
pub fn futex_wake(word: &AtomicU32, private: bool) {
    let op = libc::FUTEX_WAKE | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    // SAFETY: FUTEX_WAKE on a live, aligned word; no other memory is touched.
    unsafe { raw_syscall6(libc::SYS_futex, [word.as_ptr() as u64, op as u64, i32::MAX as u64, 0, 0, 0]) };
}

/// Wait on `word` while it holds `value`, until woken, a signal, or `timeout`.
pub fn futex_wait(word: &AtomicU32, value: u32, timeout: &libc::timespec, private: bool) {
    let op = libc::FUTEX_WAIT | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    let args = [word.as_ptr() as u64, op as u64, value as u64, timeout as *const libc::timespec as u64, 0, 0];
    // SAFETY: FUTEX_WAIT on a live, aligned word, with a live timeout it only reads.
    unsafe { raw_syscall6(libc::SYS_futex, args) };
}

/// The monotonic clock, in nanoseconds (the system call, not the vDSO's `clock_gettime`
/// through the C library).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the `timespec` it is given, which lives for the call.
    unsafe {
        raw_syscall6(libc::SYS_clock_gettime, [libc::CLOCK_MONOTONIC as u64, &mut now as *mut _ as u64, 0, 0, 0, 0])
    };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
