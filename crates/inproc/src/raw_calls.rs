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

/// Whether thread `tid` of this process lives (`tgkill` with no signal): `false` once it has
/// ended and the kernel let it go.
pub fn thread_lives(tid: libc::pid_t) -> bool {
    // SAFETY: tgkill with signal 0 sends nothing and touches no memory.
    let r = unsafe { raw_syscall6(libc::SYS_tgkill, [getpid() as u64, tid as u64, 0, 0, 0, 0]) };
    r != -(libc::ESRCH as i64)
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

/// `prctl(option, arg2)`: its result, or `-errno`.
pub fn prctl(option: i32, arg2: u64) -> i64 {
    // SAFETY: the options dprobe passes (`PR_GET_*`/`PR_SET_*` of the calling thread's
    // credentials) take integers, no pointer.
    unsafe { raw_syscall6(libc::SYS_prctl, [option as u64, arg2, 0, 0, 0, 0]) }
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The capability sets of thread `tid` of this process (0: the calling thread), as `capget`
/// lays them out: effective, permitted and inheritable of the low 32 capabilities, then of
/// the high 32.
pub fn capget(tid: libc::pid_t) -> Option<[u32; 6]> {
    let header = [CAPABILITY_VERSION_3, tid as u32];
    let mut sets = [0u32; 6];
    // SAFETY: capget reads the 8-byte header and writes two 12-byte records, both live here.
    let r = unsafe { raw_syscall6(libc::SYS_capget, [header.as_ptr() as u64, sets.as_mut_ptr() as u64, 0, 0, 0, 0]) };
    (r == 0).then_some(sets)
}

/// Set the calling thread's capability sets (laid out as [`capget`] gives them); whether the
/// kernel took them.
pub fn capset(sets: &[u32; 6]) -> bool {
    let header = [CAPABILITY_VERSION_3, 0];
    // SAFETY: capset reads the 8-byte header and two 12-byte records, both live here.
    unsafe { raw_syscall6(libc::SYS_capset, [header.as_ptr() as u64, sets.as_ptr() as u64, 0, 0, 0, 0]) == 0 }
}
