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
//! The copies are the thread's own, used in turn (`ThreadState::sigset_copies`): the function
//! reads its set at once, and another call on the thread (a signal handler's) would have to
//! come sixteen times in those few instructions to reuse one before it is read.
//!
//! Not covered: a thread that blocked `SIGTRAP` before the probe was placed (a process dprobe
//! attaches to), a raw `rt_sigprocmask` system call, and a signal handler whose `sa_mask`
//! holds `SIGTRAP` (a probe on `int3` hit in it still kills the program).

use dprobe_arch::{Addr, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::probe::{register, Probe};
use crate::{sys, thread_state};

const TRAP: u64 = 1 << (libc::SIGTRAP - 1);
/// Signals 1 to 31.
const STANDARD: u64 = (1 << 31) - 1;
/// More standard signals than this in a set that holds `SIGTRAP`: a set of "every signal".
const MOST: u32 = 16;

/// Keep `SIGTRAP` out of the masks that block most signals, set with `pthread_sigmask` and
/// `sigprocmask`, for as long as the probe returned lives (see the module's comment).
pub fn keep_traps_open() -> Result<Probe, ProbeError> {
    register(Kprobe::symbol("libc:pthread_sigmask").pre(set_without_trap))
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
    let blocks_most = |w: u64| w & TRAP != 0 && (w & STANDARD).count_ones() > MOST;
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
    let k = state.sigset_next.get();
    state.sigset_next.set(k.wrapping_add(1));
    let copy = &state.sigset_copies[k as usize % state.sigset_copies.len()];
    copy.set(words);
    regs.rsi = copy.as_ptr() as u64;
    PreAction::Continue
}
