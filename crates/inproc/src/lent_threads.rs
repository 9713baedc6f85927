//! The process and thread ids a hit reports, right in children that share the program's
//! memory.
//!
//! `vfork` and `posix_spawn` (which `system` and `popen` call) run a child process in the
//! program's memory while the calling thread waits: the child runs on that thread's thread
//! pointer, so its hits find the thread's state and would report the thread's ids, cached
//! there. Probes on the entries of `vfork`, `posix_spawn` and `posix_spawnp` ([`watch_lent_threads`]) mark
//! the calling thread's state as *lent* before the child exists, with the stack pointer at
//! the function's entry; while it is, the ids are asked of the kernel at each hit (two system
//! calls) and nothing is cached in the state the thread will take back. The loan ends at a
//! hit of the thread itself (its process's id) above that frame: the function has returned
//! (hits inside it, before or after the child, keep the loan). A thread whose later hits all
//! come from deeper frames keeps paying for the two system calls, with the right ids.
//!
//! The probes are kept only where they jump (an `int3` at these entries would be a trap in
//! every call, in threads that may block `SIGTRAP`).
//!
//! Not covered: a child made by a raw `clone` system call with `CLONE_VM` (not through the C
//! library's functions), whose hits report the ids of the thread that made it.

use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

use dprobe_arch::Regs;
use dprobe_core::{Kprobe, PreAction};

use crate::probe::{register, register_all, Probe};
use crate::thread_state::{self, ThreadState};
use crate::{raw_calls, sys};

/// The program's process id, as of the engine's start or the last `fork` (0: not noted yet).
static PROGRAM: AtomicI32 = AtomicI32::new(0);

/// Note the program's process id (at the engine's start, and in a forked child).
pub(crate) fn note_program() {
    PROGRAM.store(sys::own_pid(), Relaxed);
}

/// The program's process id, as last noted (asked of the kernel if never noted).
pub(crate) fn program() -> i32 {
    match PROGRAM.load(Relaxed) {
        0 => sys::own_pid(),
        pid => pid,
    }
}

/// The C library's functions that run a child on the calling thread's memory.
const LENDERS: [&str; 3] = ["libc:vfork", "libc:posix_spawn", "libc:posix_spawnp"];

/// The probes that mark a thread lent to a child (see the module's comment); removed when
/// dropped.
#[derive(Debug)]
pub struct LentThreads {
    _probes: Vec<Probe>,
}

/// Place the probes on the functions that lend their thread to a child. Each is kept where
/// it can be placed as a jump: one the C library lacks, or that cannot jump, leaves its
/// children reporting the ids of the thread that started them, as before.
pub fn watch_lent_threads() -> LentThreads {
    let asked = lent_thread_probes;
    // One batch (one round of code changes); where one is missing, each on its own.
    let probes =
        register_all(asked()).unwrap_or_else(|_| asked().into_iter().filter_map(|p| register(p).ok()).collect());
    LentThreads::of(probes)
}

/// The probes [`watch_lent_threads`] places, for a batch of the caller's (with other probes:
/// one round of code changes for all); [`LentThreads::of`] takes them once placed.
pub fn lent_thread_probes() -> Vec<Kprobe> {
    note_program();
    LENDERS.iter().map(|symbol| Kprobe::symbol(symbol).pre(lends_its_thread)).collect()
}

impl LentThreads {
    /// The probes [`lent_thread_probes`] gave, placed: those that are jumps are kept.
    pub fn of(probes: Vec<Probe>) -> LentThreads {
        LentThreads { _probes: probes.into_iter().filter(|p| p.optimized().is_ok()).collect() }
    }
}

/// At the entry of a function that lends its thread: the thread's id is cached now (the
/// child must not be the one to cache it), and the state is marked lent down from here (the
/// outermost such frame, when one lends within another).
fn lends_its_thread(regs: &mut Regs) -> PreAction {
    if let Some(state) = thread_state::current() {
        state.tid();
        state.lent.set(state.lent.get().max(regs.rsp));
    }
    PreAction::Continue
}

/// The calling thread's process and thread ids, at a hit with stack pointer `sp` (0: not at a
/// hit: the loan is not ended).
pub(crate) fn ids(state: Option<&ThreadState>, sp: u64) -> (u32, u32) {
    match state {
        Some(s) if s.lent.get() != 0 => {
            let pid = sys::own_pid();
            if pid != program() {
                return (pid as u32, raw_calls::gettid() as u32);
            }
            // The thread itself: above the lending function's frame, that function is over.
            if sp > s.lent.get() {
                s.lent.set(0);
            }
            (pid as u32, s.tid())
        }
        Some(s) => (program() as u32, s.tid()),
        None => (sys::own_pid() as u32, raw_calls::gettid() as u32),
    }
}
