//! Keeping `SIGTRAP` open in threads that block every signal.
//!
//! A probe on `int3` raises a `SIGTRAP` the kernel forces on the thread, and a forced signal
//! the thread blocks has its action reset to the default for the whole process: the thread is
//! killed at the hit. Threads that block every signal (`pthread_sigmask` of a full set, to
//! take them with `sigwait`) are common in servers. [`keep_traps_open`] places a probe on the
//! C library's `pthread_sigmask` (which `sigprocmask` calls too, from glibc 2.32 on) whose
//! handler points a call that blocks most signals, `SIGTRAP` among them, at a copy of its set
//! without `SIGTRAP`: the mask asked for but the trap, which such a set blocks only as part of
//! "every signal". A set that blocks `SIGTRAP` and few others (a program that waits for it
//! with `sigwait`) is left as it is. The function itself runs (its return value, the old mask
//! and `errno` are its own), and so do other probes there.
//!
//! The copies are the thread's own, used in turn (`ThreadState::next_signal_copy`): the function
//! reads its set at once, and another call on the thread (a signal handler's) would have to
//! come sixteen times in those few instructions to reuse one before it is read.
//!
//! The same guard keeps `SIGTRAP` out of signal handlers' masks (`handler_masks.rs`), and
//! keeps it handled in the children `posix_spawn` and `system` start (`spawn_children.rs`).
//!
//! Not covered: a thread that blocked `SIGTRAP` before the probe was placed (a process dprobe
//! attaches to), a set that blocks `SIGTRAP` by name ([`blocks_trap_by_name`]: dprobe's agent
//! leaves the program before such a call), and a raw `rt_sigprocmask` system call.

use dprobe_arch::{Addr, NotOptimized, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::probe::{register, register_all, Probe};
use crate::thread_state::SIGNAL_COPY_WORDS;
use crate::{handler_masks, spawn_children, sys, thread_state};

pub(crate) const TRAP: u64 = 1 << (libc::SIGTRAP - 1);
/// Signals 1 to 31.
const STANDARD: u64 = (1 << 31) - 1;
/// More standard signals than this in a set that holds `SIGTRAP`: a set of "every signal".
const MOST: u32 = 16;

/// Keep `SIGTRAP` out of the masks that block most signals, set with `pthread_sigmask` and
/// `sigprocmask`, and out of signal handlers' masks, and keep it handled in the children
/// `posix_spawn` and `system` start, for as long as the guard returned lives (see the
/// module's comment and `TrapsOpen`).
pub fn keep_traps_open() -> Result<TrapsOpen, ProbeError> {
    let masks = || Kprobe::symbol("libc:pthread_sigmask").pre(set_without_trap).after_others();
    // The three in one batch (one round of code changes, not three) where all three can be
    // placed; otherwise one by one, as far as each goes.
    let children = spawn_children::probe().ok().flatten();
    let asked = [masks(), handler_masks::probe()].into_iter().chain(children);
    let mut placed = register_all(asked.collect()).unwrap_or_default().into_iter();
    if let (Some(masks), Some(actions)) = (placed.next(), placed.next()) {
        let children = placed.next().and_then(spawn_children::kept);
        return Ok(TrapsOpen { masks, actions: Some(handler_masks::opened(actions)), children });
    }
    let masks = register(masks())?;
    let actions = handler_masks::open()?;
    // Without it (its function not found, or not a jump) children are as they were.
    let children = spawn_children::keep_trap_in_children().ok().flatten();
    Ok(TrapsOpen { masks, actions: Some(actions), children })
}

/// Probes on the C library's `pthread_sigmask` and `sigaction` that keep `SIGTRAP` open, and
/// on its `__libc_sigaction` for the children it starts ([`keep_traps_open`]). Dropping it
/// removes them and puts `SIGTRAP` back in the masks of the handlers whose masks held it
/// (once the last such guard goes), so the program's actions are as it set them.
#[derive(Debug)]
pub struct TrapsOpen {
    masks: Probe,
    /// Taken when the guard is dropped: removed before the handlers' masks are put back.
    actions: Option<Probe>,
    /// Where it could be placed as a jump (`spawn_children.rs`).
    children: Option<Probe>,
}

impl TrapsOpen {
    /// Whether the probes on `pthread_sigmask` and `sigaction` are jump-optimized (an `int3`
    /// on either would itself be a trap in the calls it watches), or why one is not.
    pub fn optimized(&self) -> Result<(), NotOptimized> {
        self.masks.optimized()?;
        self.actions.as_ref().map_or(Ok(()), Probe::optimized)
    }

    /// Whether the children `posix_spawn` and `system` start keep `SIGTRAP` handled until
    /// their `exec` (not where the C library's `__libc_sigaction` cannot be found or jumped
    /// to).
    pub fn keeps_children(&self) -> bool {
        self.children.is_some()
    }
}

impl Drop for TrapsOpen {
    fn drop(&mut self) {
        if let Some(actions) = self.actions.take() {
            handler_masks::close(actions);
        }
    }
}

/// Whether a set whose first word (signals 1 to 64) is `word`, blocked, blocks `SIGTRAP` by
/// name: with few other standard signals, a set this guard leaves as it is (the program uses
/// `SIGTRAP` itself, `sigwait`s for it). The kernel kills the thread at its next trap then.
pub fn blocks_trap_by_name(word: u64) -> bool {
    word & TRAP != 0 && (word & STANDARD).count_ones() <= MOST
}

/// `pthread_sigmask(how, set, old)`'s first instruction: a `SIG_BLOCK` or `SIG_SETMASK` of a
/// set that holds `SIGTRAP` and most signals reads a copy without `SIGTRAP`. Anything else (a
/// set that cannot be read, a thread without dprobe's state) is left as it is.
fn set_without_trap(regs: &mut Regs) -> PreAction {
    let (how, set) = (regs.rdi as i32, regs.rsi);
    if set == 0 || (how != libc::SIG_BLOCK && how != libc::SIG_SETMASK) {
        return PreAction::Continue;
    }
    let mut first = [0u8; 8];
    let blocks_most = |w: u64| w & TRAP != 0 && !blocks_trap_by_name(w);
    if sys::read_memory(Addr(set), &mut first).is_err() || !blocks_most(u64::from_le_bytes(first)) {
        return PreAction::Continue;
    }
    // The C library's whole `sigset_t`, which it may copy before it changes the mask.
    let mut bytes = [0u8; 128];
    if sys::read_memory(Addr(set), &mut bytes).is_err() {
        return PreAction::Continue;
    }
    let mut words = [0u64; 16];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
    }
    let Some(state) = thread_state::current().filter(|_| blocks_most(words[0])) else { return PreAction::Continue };
    words[0] &= !TRAP;
    let copy = state.next_signal_copy();
    let mut whole = [0u64; SIGNAL_COPY_WORDS];
    whole[..16].copy_from_slice(&words);
    copy.set(whole);
    regs.rsi = copy.as_ptr() as u64;
    PreAction::Continue
}
