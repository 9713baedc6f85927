//! Keeping the program's signals pending, their information intact, while the tracer makes
//! one of its threads run for it (a single step, an injected system call, a call into the C
//! library, the way back into a system call).
//!
//! A signal the tracer takes off a thread's queue can only be given back by sending it anew,
//! and a signal sent anew is not the one that came: `rt_tgsigqueueinfo` from another process
//! may not claim to be a `kill` or a `tgkill` (`EPERM`), so such a signal comes back as a
//! `tgkill` from dprobe, and one given back from another stop than its own delivery stop
//! comes as a `kill` from the tracer. Programs check: glibc's `setuid`/`setgid` signal every
//! thread with `SIGSETXID` and wait until each has made the call; a thread ignores the signal
//! unless it is a `tgkill` from its own process, and the caller then waits for ever.
//!
//! So signals are not taken off the queue: while a thread runs for the tracer it blocks every
//! signal that can be blocked without harm ([`KEPT_DURING_STEPS`]), and they stay pending
//! where the kernel keeps them, for that thread or for the process. A signal already taken
//! (the thread is in its delivery stop, or one comes that was not blocked) is given back
//! through the kernel's own path: blocked, then passed on as the thread resumes, it is queued
//! again by the kernel exactly as it was (`ptrace_signal`: "if the (new) signal is now
//! blocked, requeue it"), for the thread or the process it was sent to.
//!
//! Never blocked: the signals a fault raises (the kernel forces them, and a forced signal the
//! thread blocks has its action reset to the default: the program's handler would be gone),
//! `SIGTRAP` (a single step's own), and the two that cannot be.

use crate::error::SysError;
use crate::sys;

/// Signal `signal` as a mask bit (bit N-1: signal N).
pub(crate) const fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// Never blocked by the tracer (see the module's text).
pub(crate) const NEVER_BLOCKED: u64 = bit(libc::SIGSEGV)
    | bit(libc::SIGBUS)
    | bit(libc::SIGILL)
    | bit(libc::SIGFPE)
    | bit(libc::SIGTRAP)
    | bit(libc::SIGSYS)
    | bit(libc::SIGKILL)
    | bit(libc::SIGSTOP);

/// The signals a fault raises: forced by the kernel, which resets the action of one the thread
/// blocks to the default, for the whole process.
pub(crate) const FAULTS: u64 = bit(libc::SIGSEGV) | bit(libc::SIGBUS) | bit(libc::SIGILL) | bit(libc::SIGFPE);

/// Signals 1 to 31.
pub(crate) const STANDARD: u64 = (1 << 31) - 1;

/// More standard signals than this blocked: a thread that blocks "every signal".
pub(crate) const MOST_BLOCKED: u32 = 16;

/// glibc's `SIGSETXID` (its second internal real-time signal).
pub(crate) const SETXID: i32 = 33;

/// Blocked while a thread executes an instruction or a system call for the tracer.
pub(crate) const KEPT_DURING_STEPS: u64 = !NEVER_BLOCKED;

/// Blocked while a thread runs a function of the C library for the tracer (`dlopen`): all
/// of the above but `SIGSETXID`. Another thread inside `setuid` holds the lock on the thread
/// stacks (`dl_stack_cache_lock`) until every thread has answered it: a call that creates a
/// thread would wait for that lock for ever. Its handler only makes the system call and
/// answers, wherever it interrupts.
pub(crate) const KEPT_DURING_CALLS: u64 = KEPT_DURING_STEPS & !bit(SETXID);

/// Whether `signal`, taken off a thread's queue, can be given back through the kernel: one
/// the tracer may block.
pub(crate) fn can_keep(signal: i32) -> bool {
    (1..=64).contains(&signal) && bit(signal) & NEVER_BLOCKED == 0
}

/// What stopped thread `tid`, running for the tracer with the signals of `kept` blocked and
/// stopped to receive `signal`, is resumed with: a signal the tracer does not keep from the
/// program is delivered; one that can be kept is blocked and given back, to be queued again
/// by the kernel as the thread resumes (see the module's text); `None` for one that can be
/// neither, which the caller holds.
pub(crate) fn resume_with(tid: i32, signal: i32, kept: u64) -> Result<Option<i32>, SysError> {
    if !can_keep(signal) {
        return Ok(None);
    }
    if kept & bit(signal) != 0 {
        sys::set_sigmask(tid, sys::sigmask(tid)? | bit(signal))?;
    }
    Ok(Some(signal))
}
