//! The program's `errno` across handlers.
//!
//! A hit stops the program between any two of its instructions, often between a failed call
//! and the code that reads `errno` (a probe at a function's `ret`, or on the caller's next
//! call). A handler's own calls set `errno` when they fail (a file it could not open, a write
//! to a full pipe), and a signal handler that leaves `errno` changed is a classic bug: the
//! program would see the handler's error as its own. So each handler call (under the fault
//! guard, see `guard.rs`) starts with the program's `errno` and leaves it as it found it,
//! whatever the handler did, faulted or not, unless the handler asked for a value with
//! [`set_program_errno`] (fault injection: a return probe that makes a call fail sets `rax`
//! and `errno` both, as a failed system call would have).
//!
//! Not separated: a program's signal handler that interrupts a handler and hits a probe
//! itself; its handlers see, and leave, the `errno` of the hit it interrupted.

use crate::thread_state::{self, ThreadState};

/// The calling thread's `errno`, its location found once per thread.
fn location(state: &ThreadState) -> *mut i32 {
    let known = state.errno_at.get();
    if known != 0 {
        return known as *mut i32;
    }
    // dprobe's call, not the program's: a probe on `__errno_location` counts nothing for it.
    state.own_work.set(state.own_work.get() + 1);
    // SAFETY: `__errno_location` has no preconditions and only computes a thread-local
    // address (async-signal-safe); the address stays valid as long as the thread lives, which
    // is as long as its state entry is its own.
    let at = unsafe { libc::__errno_location() };
    state.own_work.set(state.own_work.get() - 1);
    state.errno_at.set(at as u64);
    at
}

/// Note the program's `errno` before a guarded call; only the outermost one's is the
/// program's. Calls nest where dprobe's own handler (a return probe's, at a function's exit)
/// calls a tool's: the value the inner one leaves (or sets) is the one the program gets.
#[inline(always)]
pub(crate) fn keep(state: &ThreadState, outermost: bool) -> *mut i32 {
    let at = location(state);
    if outermost {
        // SAFETY: the calling thread's own errno.
        state.program_errno.set(unsafe { *at });
    }
    at
}

/// After a guarded call: give the program its `errno` back (or the value a handler set).
#[inline(always)]
pub(crate) fn give_back(state: &ThreadState, at: *mut i32) {
    // SAFETY: the calling thread's own errno (`at` is from `keep`).
    unsafe { *at = state.program_errno.get() };
}

fn in_handler_call() -> Option<&'static ThreadState> {
    thread_state::existing().filter(|s| s.handler_body.get() > 0)
}

/// The program's `errno` at the hit, as the program will see it: inside a handler, the value
/// it had when the hit stopped it (or the one a handler set with [`set_program_errno`]),
/// whatever the handler's own calls did to `errno` meanwhile; elsewhere, `errno`.
/// Async-signal-safe.
pub fn program_errno() -> i32 {
    match in_handler_call() {
        Some(state) => state.program_errno.get(),
        // SAFETY: the calling thread's own errno.
        None => unsafe { *libc::__errno_location() },
    }
}

/// Inside a handler: the value the program's `errno` has when it continues (otherwise the
/// value it had at the hit is put back after each handler). Elsewhere, sets `errno`.
/// Async-signal-safe.
pub fn set_program_errno(value: i32) {
    match in_handler_call() {
        Some(state) => state.program_errno.set(value),
        // SAFETY: the calling thread's own errno.
        None => unsafe { *libc::__errno_location() = value },
    }
}
