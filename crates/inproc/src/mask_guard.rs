//! Keeping `SIGTRAP` open in threads that block every signal.
//!
//! A probe on `int3` raises a `SIGTRAP` the kernel forces on the thread, and a forced signal
//! the thread blocks has its action reset to the default for the whole process: the thread is
//! killed at the hit. Threads that block every signal (`pthread_sigmask` of a full set, to
//! take them with `sigwait`) are common in servers. [`keep_traps_open`] places a probe on the
//! C library's `pthread_sigmask` (which `sigprocmask` calls too) whose handler points the
//! call at a copy of the set it was given, without `SIGTRAP`: the mask asked for but
//! `SIGTRAP`, which programs block only as part of "every signal". The function itself runs
//! (its return value, the old mask and `errno` are its own), and so do other probes there.
//!
//! The copies are the thread's own, used in turn (`ThreadState::sigset_copies`): the function
//! reads its set at once, and another call on the thread (a signal handler's) would have to
//! come sixteen times in those few instructions to reuse one before it is read.
//!
//! Not covered: a thread that blocked `SIGTRAP` before the probe was placed (a process dprobe
//! attaches to), a raw `rt_sigprocmask` system call, and a signal handler whose `sa_mask`
//! holds `SIGTRAP` (a probe on `int3` hit in it still kills the program).

use std::sync::Mutex;

use dprobe_arch::{Addr, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::probe::{register, Probe};
use crate::{sys, thread_state};

/// The probe on `pthread_sigmask`, once placed.
static GUARD: Mutex<Option<Probe>> = Mutex::new(None);

const TRAP: u64 = 1 << (libc::SIGTRAP - 1);

/// Keep `SIGTRAP` out of the masks the program sets with `pthread_sigmask` and `sigprocmask`
/// from now on (see the module's comment). Placed once; stays for the process's life.
pub fn keep_traps_open() -> Result<(), ProbeError> {
    let mut guard = GUARD.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(register(Kprobe::symbol("libc:pthread_sigmask").pre(set_without_trap))?);
    }
    Ok(())
}

/// `pthread_sigmask(how, set, old)`'s first instruction: a `SIG_BLOCK` or `SIG_SETMASK` of a
/// set that holds `SIGTRAP` reads a copy without it. Anything else (a set that cannot be read,
/// a thread without dprobe's state) is left as it is.
fn set_without_trap(regs: &mut Regs) -> PreAction {
    let (how, set) = (regs.rdi as i32, regs.rsi);
    if set == 0 || (how != libc::SIG_BLOCK && how != libc::SIG_SETMASK) {
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
    let Some(state) = thread_state::current().filter(|_| words[0] & TRAP != 0) else { return PreAction::Continue };
    words[0] &= !TRAP;
    let k = state.sigset_next.get();
    state.sigset_next.set(k.wrapping_add(1));
    let copy = &state.sigset_copies[k as usize % state.sigset_copies.len()];
    copy.set(words);
    regs.rsi = copy.as_ptr() as u64;
    PreAction::Continue
}
