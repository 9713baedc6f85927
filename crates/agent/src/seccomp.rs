//! The seccomp filters a thread runs under, as `/proc` says.
//!
//! A forked child's thread has the filters of the thread that forked: one installed with
//! `prctl(PR_SET_SECCOMP)` binds that thread alone (not the agent's), but the child's agent
//! thread, started from it, inherits it, and a filter made for the program may forbid the
//! agent's system calls, or kill the child for them. Such a child runs untraced.

use std::sync::atomic::{AtomicU32, Ordering::*};

/// The agent thread's filters when its session started (`u32::MAX`: unknown).
static AGENT_FILTERS: AtomicU32 = AtomicU32::new(u32::MAX);

/// The calling thread's.
fn own() -> Option<(u32, Option<u32>)> {
    dprobe_ptrace::seccomp_status("/proc/thread-self/status")
}

/// On the agent's thread as its session starts: its filters, for [`forked_under_a_filter`].
pub(crate) fn note_agent_thread() {
    if let Some((_, Some(filters))) = own() {
        AGENT_FILTERS.store(filters, Release);
    }
}

/// In a forked child, on its thread: whether it runs under a filter the agent's thread did not
/// (strict mode, or more filters; where the count is not known, any filter).
pub(crate) fn forked_under_a_filter() -> bool {
    let agent = AGENT_FILTERS.load(Acquire);
    match own() {
        Some((1, _)) => true,
        Some((2, Some(filters))) => agent == u32::MAX || filters > agent,
        Some((2, None)) => true,
        _ => false,
    }
}
