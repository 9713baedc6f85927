//! Keeping `SIGTRAP` out of signal handlers' masks.
//!
//! While a handler runs, the kernel blocks the signals of its action's mask (`sa_mask`). A
//! handler installed with a full mask (`sigfillset(&sa.sa_mask)`, a common idiom) blocks
//! `SIGTRAP` then, and a probe on `int3` hit in it (in the handler's code or anything it
//! calls) raises a forced signal the thread blocks: the kernel resets its action and kills the
//! program. While a [`crate::TrapsOpen`] lives:
//!
//! - a probe on the C library's `sigaction` points a call that installs a handler function
//!   whose mask holds `SIGTRAP` at a copy of its action without it (the thread's own copies,
//!   as `mask_guard.rs` uses them), and the function runs on the copy;
//! - the same probe answers a call for a signal whose handler is dprobe's (the trap, the
//!   faults) without installing anything: the program's action becomes the one dprobe's
//!   handler passes the program's own signals to (`signals::program_installs`), and `old`
//!   shows the program's, as if installed;
//! - the actions already installed when the guard is made get the same change, through the
//!   system call itself;
//! - when the last guard goes, the probe is removed first, then `SIGTRAP` is put back in the
//!   masks of the actions dprobe changed that are still as dprobe left them (same handler,
//!   same mask): also where the program saved such an action (`sigaction`'s third argument
//!   shows it without `SIGTRAP` while the guard lives) and installed it again.
//!
//! The kernel replaces an action whole and hands back the one it replaced, so a change of an
//! installed action that finds another action than the one it read (the program installed
//! one in between) puts the program's back.
//!
//! Not covered: a handler running when the guard is made (its mask is in force already), and
//! an action installed with a raw `rt_sigaction` system call while the guard lives. A program
//! that installs, while the guard lives, an action it made itself that happens to be the one
//! dprobe left gets `SIGTRAP` in its mask when the guard goes. dprobe's own handlers (the
//! trap, the faults, the safepoint signal) are left as they are.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;

use dprobe_arch::{Addr, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::mask_guard::TRAP;
use crate::probe::{register, Probe};
use crate::sys::{swap_action, KernelAction};
use crate::thread_state::SIGNAL_COPY_WORDS;
use crate::{signals, sys, thread_state};

/// The signals whose actions dprobe made without `SIGTRAP` in their masks (bit N-1 for signal
/// N): the ones it puts back, if their actions are as it left them then (`LEFT`): not if the
/// program installed another since, but again if it put back the one dprobe left (saved with
/// `sigaction`'s third argument, which shows it without `SIGTRAP` while the guard lives).
static OPENED: AtomicU64 = AtomicU64::new(0);

/// By signal, the handler and mask (signals 1 to 64) of the action as dprobe left it, without
/// `SIGTRAP`; valid while the signal's bit of `OPENED` is set.
static LEFT: [[AtomicU64; 2]; 65] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; 65];

/// Signals a mask never holds (the kernel takes them out of the masks it is given).
const UNBLOCKABLE: u64 = 1 << (libc::SIGKILL - 1) | 1 << (libc::SIGSTOP - 1);

/// Record that `sig`'s action is `handler` with `mask`, as dprobe left it.
fn left(sig: i32, handler: u64, mask: u64) {
    OPENED.fetch_and(!bit(sig), Relaxed);
    LEFT[sig as usize][0].store(handler, Relaxed);
    LEFT[sig as usize][1].store(mask & !UNBLOCKABLE, Relaxed);
    OPENED.fetch_or(bit(sig), Release);
}

/// Whether `sig`'s action `handler` with `mask` is the one dprobe left.
fn as_left(sig: i32, handler: u64, mask: u64) -> bool {
    OPENED.load(Acquire) & bit(sig) != 0
        && LEFT[sig as usize][0].load(Relaxed) == handler
        && LEFT[sig as usize][1].load(Relaxed) == mask & !UNBLOCKABLE
}

/// The program's signals whose handlers run with nothing more blocked (`SA_NODEFER`, a mask
/// with none of the program's signals), as the guard saw them installed (bit N-1 for signal
/// N): a frame of such a handler that has not returned shows no change of mask
/// (`interrupted.rs`).
static UNMASKED_HANDLERS: AtomicU64 = AtomicU64::new(0);

/// Note `sig`'s action as installed: `handler`, the kernel's `flags` and `mask`.
fn note_handler(sig: i32, handler: u64, flags: u64, mask: u64) {
    let programs = !signals::dprobes_signals() & !UNBLOCKABLE;
    let unmasked = !is_disposition(handler) && flags & libc::SA_NODEFER as u64 != 0 && mask & programs == 0;
    match unmasked {
        true => UNMASKED_HANDLERS.fetch_or(bit(sig), Relaxed),
        false => UNMASKED_HANDLERS.fetch_and(!bit(sig), Relaxed),
    };
}

/// Whether the program has a handler that runs with nothing more blocked (`SA_NODEFER` and a
/// mask with none of its signals), as far as a guard has seen: its frames cannot be told from
/// stale ones by the mask.
pub(crate) fn unmasked_handlers() -> bool {
    UNMASKED_HANDLERS.load(Relaxed) != 0
}

/// How many guards live: the masks are put back when the last goes, and a guard's scan of the
/// installed actions does not run beside another's putting back.
static GUARDS: Mutex<usize> = Mutex::new(0);

/// Whether a guard lives (the probe on `sigaction` is placed), for the hit path to read.
static PLACED: AtomicBool = AtomicBool::new(false);

/// Whether dprobe's handlers of the signals it handles stay in place: a guard lives, and the
/// program's `sigaction` calls for those signals are answered without installing anything
/// (a raw `rt_sigaction` system call is not seen).
pub(crate) fn keeps_dprobes_handlers() -> bool {
    PLACED.load(Acquire)
}

// The C library's `struct sigaction`: handler, `sigset_t` (16 words), flags, restorer.
const _: () = assert!(std::mem::size_of::<libc::sigaction>() == SIGNAL_COPY_WORDS * 8);
/// Word of the C library's `struct sigaction` that holds signals 1 to 64 of its mask.
const MASK_WORD: usize = 1;
/// Word of the C library's `struct sigaction` whose low half is `sa_flags`.
const FLAGS_WORD: usize = 17;
const _: () = assert!(std::mem::offset_of!(libc::sigaction, sa_flags) == FLAGS_WORD * 8);

/// Place the probe on `sigaction` and take `SIGTRAP` out of the installed handlers' masks.
pub(crate) fn open() -> Result<Probe, ProbeError> {
    Ok(opened(register(probe())?))
}

/// The probe on `sigaction` [`open`] places (for a batch of its own caller's).
pub(crate) fn probe() -> Kprobe {
    Kprobe::symbol("libc:sigaction").pre(action_without_trap).after_others()
}

/// [`open`] once `probe`, the one [`probe`] gives, is placed: the installed handlers' masks
/// without `SIGTRAP`.
pub(crate) fn opened(probe: Probe) -> Probe {
    let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
    // The probe first: an action the program installs during the scan goes through it.
    for sig in handled_signals() {
        let without_trap = |[handler, flags, _, mask]: KernelAction| {
            note_handler(sig, handler, flags, mask);
            (mask & TRAP != 0).then_some(mask & !TRAP).filter(|_| !is_disposition(handler))
        };
        if let Some([handler, _, _, mask]) = change_mask(sig, without_trap) {
            left(sig, handler, mask);
        }
    }
    *guards += 1;
    PLACED.store(true, Release);
    probe
}

/// Remove the probe and, for the last guard, put `SIGTRAP` back in the masks dprobe took it
/// out of.
pub(crate) fn close(probe: Probe) {
    let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
    drop(probe);
    *guards -= 1;
    if *guards > 0 {
        return;
    }
    PLACED.store(false, Release);
    for sig in handled_signals() {
        change_mask(sig, |[handler, _, _, mask]| as_left(sig, handler, mask).then_some(mask | TRAP));
    }
    OPENED.store(0, Relaxed);
    UNMASKED_HANDLERS.store(0, Relaxed);
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// The signals whose actions may be changed: all but those that cannot be caught, the trap
/// itself, and the ones whose handlers are dprobe's.
fn handled_signals() -> impl Iterator<Item = i32> {
    let own = signals::dprobes_signals();
    (1..=64).filter(move |&sig| ![libc::SIGKILL, libc::SIGSTOP, libc::SIGTRAP].contains(&sig) && own & bit(sig) == 0)
}

/// Give `sig`'s action the mask `change` returns for it (`None`: left as it is): the action
/// installed, if it was. If the program installed another action since it was read, the
/// program's is put back and nothing counts as changed.
fn change_mask(sig: i32, change: impl Fn(KernelAction) -> Option<u64>) -> Option<KernelAction> {
    let seen = swap_action(sig, None)?;
    let mut changed = seen;
    changed[3] = change(seen)?;
    match swap_action(sig, Some(&changed)) {
        Some(replaced) if replaced == seen => Some(changed),
        Some(replaced) => {
            swap_action(sig, Some(&replaced));
            None
        }
        None => None,
    }
}

/// `SIG_DFL` or `SIG_IGN`: no handler runs, and the mask is never in force.
fn is_disposition(handler: u64) -> bool {
    handler == libc::SIG_DFL as u64 || handler == libc::SIG_IGN as u64
}

/// `sigaction(sig, act, old)` for a signal whose handler is dprobe's (the trap, a fault):
/// answered as the kernel would, without installing anything (`signals::program_installs`):
/// `old` gets the program's disposition, `act` becomes it, and the function returns 0 (an
/// `old` that cannot be written: -1 with `EFAULT`, `act` taken all the same, as the kernel
/// does). `None` for other signals, and where `act` cannot be read (the call fails by itself).
fn answer_for_dprobes_signal(regs: &mut Regs) -> Option<PreAction> {
    let (sig, act, old_at) = (regs.rdi as i32, regs.rsi, regs.rdx);
    if !signals::answers_for(sig) {
        return None;
    }
    let new = match act {
        0 => None,
        at => Some(read_words::<{ signals::ACTION_WORDS }>(at)?),
    };
    let mut return_to = [0u8; 8];
    sys::read_memory(Addr(regs.rsp), &mut return_to).ok()?;
    let old = signals::program_installs(sig, new.as_ref());
    let mut bytes = [0u8; signals::ACTION_WORDS * 8];
    for (b, w) in bytes.chunks_exact_mut(8).zip(old) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    regs.rax = 0;
    if old_at != 0 && sys::write_memory(Addr(old_at), &bytes).is_err() {
        regs.rax = u64::MAX;
        crate::set_program_errno(libc::EFAULT);
    }
    // Returned from `sigaction`: its return probes watched at its exits see it too.
    crate::exits::returned_without_exit(regs);
    regs.rip = u64::from_le_bytes(return_to);
    regs.rsp += 8;
    Some(PreAction::SkipInstruction)
}

/// The `N` words at `at`, if they can be read.
fn read_words<const N: usize>(at: u64) -> Option<[u64; N]> {
    let mut bytes = [0u8; 256];
    let bytes = bytes.get_mut(..N * 8)?;
    sys::read_memory(Addr(at), bytes).ok()?;
    let mut words = [0u64; N];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
    }
    Some(words)
}

/// `sigaction(sig, act, old)`'s first instruction: an action with a handler function whose
/// mask holds `SIGTRAP` is read from a copy without it, and recorded as the one dprobe left.
/// Any other action is left as it is, and so is one that cannot be read or a call on a
/// thread without dprobe's state.
fn action_without_trap(regs: &mut Regs) -> PreAction {
    if let Some(answered) = answer_for_dprobes_signal(regs) {
        return answered;
    }
    let (sig, act) = (regs.rdi as i32, regs.rsi);
    if act == 0 || !(1..=64).contains(&sig) || sig == libc::SIGTRAP {
        return PreAction::Continue;
    }
    let Some(state) = thread_state::current() else { return PreAction::Continue };
    if state.is_signal_copy(act) {
        // Another guard's probe made this copy (and marked the signal).
        return PreAction::Continue;
    }
    let Some(mut words) = read_words::<SIGNAL_COPY_WORDS>(act) else { return PreAction::Continue };
    let (handler, mask) = (words[0], words[MASK_WORD]);
    note_handler(sig, handler, words[FLAGS_WORD] & 0xffff_ffff, mask);
    if is_disposition(handler) || mask & TRAP == 0 {
        return PreAction::Continue;
    }
    words[MASK_WORD] &= !TRAP;
    let copy = state.next_signal_copy();
    copy.set(words);
    regs.rsi = copy.as_ptr() as u64;
    left(sig, handler, mask & !TRAP);
    PreAction::Continue
}
