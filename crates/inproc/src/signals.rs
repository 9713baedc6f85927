//! Installing dprobe's signal handlers and chaining to the ones they replace.
//!
//! `SIGTRAP` finds probe hits; `SIGSEGV`, `SIGBUS`, `SIGILL` and `SIGFPE` catch faults inside
//! handlers and inside out-of-line slots. Signals that are not dprobe's go to whatever the
//! program had installed before (a handler, the default action, or "ignore"), so the
//! program's own `int3` and its own fault handlers keep working. The safepoint signals
//! (`safepoint.rs`: `SIGURG` where the program leaves it alone, else the last real-time one)
//! move threads out of code a jump is about to replace; every dprobe handler blocks both while
//! it runs, so that a thread is examined where its handler sent it.
//!
//! A program that installs its own action for the trap or a fault signal after dprobe's
//! (a crash reporter's handlers, installed at its start) would take dprobe's traps for its
//! own: while `sigaction` is probed (`handler_masks.rs`), such a call installs nothing and
//! answers as the kernel would, and its action becomes the one dprobe's handler passes the
//! program's own signals to ([`program_installs`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// The signals dprobe handles.
pub const FAULT_SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// A handler with the `SA_SIGINFO` signature.
pub type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// The same, for a handler that a forced unwind may cross: the C library's thread
/// cancellation, from a handler of its own nested in it (see `resumed_waits.rs`).
pub(crate) type UnwoundHandler = extern "C-unwind" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Room for the real-time signals too.
const MAX_SIG: usize = 65;

/// The C library's `struct sigaction` in words.
pub(crate) const ACTION_WORDS: usize = std::mem::size_of::<libc::sigaction>() / 8;
const _: () = assert!(std::mem::size_of::<libc::sigaction>() == ACTION_WORDS * 8);

/// The program's disposition of each signal dprobe handles, read by the chaining code in
/// signal context: the one dprobe's handler replaced, or the one the program installed since
/// through the probed `sigaction`. Read and written under [`VERSION`] (a sequence lock: odd
/// while a write is under way), word by word.
static PREVIOUS: [[AtomicU64; ACTION_WORDS]; MAX_SIG] =
    [const { [const { AtomicU64::new(0) }; ACTION_WORDS] }; MAX_SIG];
static VERSION: [AtomicU32; MAX_SIG] = [const { AtomicU32::new(0) }; MAX_SIG];

/// The program's disposition of `sig` (see [`PREVIOUS`]). Async-signal-safe.
fn previous(sig: libc::c_int) -> libc::sigaction {
    let (words, version) = (&PREVIOUS[sig as usize], &VERSION[sig as usize]);
    loop {
        let before = version.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let copy: [u64; ACTION_WORDS] = std::array::from_fn(|i| words[i].load(Ordering::Relaxed));
        std::sync::atomic::fence(Ordering::Acquire);
        if version.load(Ordering::Relaxed) == before {
            // SAFETY: `sigaction` is plain old data of exactly these words.
            return unsafe { std::mem::transmute::<[u64; ACTION_WORDS], libc::sigaction>(copy) };
        }
    }
}

/// Make `action` (the C library's `struct sigaction`, in words) the program's disposition of
/// `sig`. Async-signal-safe; writers of one signal wait for each other (a few stores). Every
/// signal is blocked meanwhile: a handler of dprobe's that ran on this thread between the
/// stores would wait for them for ever in [`previous`] (the stores cannot fault or trap).
fn set_previous(sig: libc::c_int, action: &[u64; ACTION_WORDS]) {
    let before = crate::sys::block_every_signal();
    store_previous(sig, action);
    crate::sys::set_signal_mask(before);
}

fn store_previous(sig: libc::c_int, action: &[u64; ACTION_WORDS]) {
    let (words, version) = (&PREVIOUS[sig as usize], &VERSION[sig as usize]);
    let mut v = version.load(Ordering::Relaxed);
    loop {
        if v % 2 == 1 {
            std::hint::spin_loop();
            v = version.load(Ordering::Relaxed);
            continue;
        }
        match version.compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => v = now,
        }
    }
    std::sync::atomic::fence(Ordering::Release);
    for (word, value) in words.iter().zip(action) {
        word.store(*value, Ordering::Relaxed);
    }
    version.store(v + 2, Ordering::Release);
}

/// The words of `action`.
fn words_of(action: &libc::sigaction) -> [u64; ACTION_WORDS] {
    // SAFETY: `sigaction` is plain old data of exactly these words.
    unsafe { std::mem::transmute::<libc::sigaction, [u64; ACTION_WORDS]>(*action) }
}

static INSTALLED: [AtomicBool; MAX_SIG] = [const { AtomicBool::new(false) }; MAX_SIG];
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// The handler-installation lock, held (see [`crate::hold_registration_locks`]).
pub(crate) fn hold_install_lock() -> std::sync::MutexGuard<'static, ()> {
    INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Install `handler` for `sig` (once; later calls do nothing), remembering the previous
/// disposition for [`chain`].
pub fn install(sig: libc::c_int, handler: SigInfoHandler) -> std::io::Result<()> {
    install_at(sig, handler as usize)
}

/// [`install`] for a handler that a forced unwind may cross.
pub(crate) fn install_unwound(sig: libc::c_int, handler: UnwoundHandler) -> std::io::Result<()> {
    install_at(sig, handler as usize)
}

fn install_at(sig: libc::c_int, handler: usize) -> std::io::Result<()> {
    let _one = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if INSTALLED[sig as usize].load(Ordering::Acquire) {
        return Ok(());
    }
    install_locked(sig, handler).map(drop)
}

/// Install `handler` for `sig` where the program has no handler of its own for it (its action
/// is the default or "ignore"), again where the program put such an action back since. A
/// signal the program handles itself is left to it: dprobe's action would not have its flags
/// (`SA_ONSTACK`: Go's runtime stops a process whose handler of its preemption signal,
/// `SIGURG`, runs off the signal stack).
pub(crate) fn install_over_default(sig: libc::c_int, handler: UnwoundHandler) -> std::io::Result<()> {
    let handler = handler as usize;
    let unhandled = |action: usize| action == libc::SIG_DFL || action == libc::SIG_IGN;
    let _one = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !crate::sys::swap_action(sig, None).is_some_and(|[now, ..]| now != handler as u64 && unhandled(now as usize)) {
        return Ok(());
    }
    let old = install_locked(sig, handler)?;
    if !unhandled(old.sa_sigaction) {
        // The program installed a handler in between: its action is put back.
        // SAFETY: a valid sigaction struct, the program's own action.
        unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        INSTALLED[sig as usize].store(false, Ordering::Release);
    }
    Ok(())
}

/// Install `handler` for `sig` (the install lock held): the action it replaced.
fn install_locked(sig: libc::c_int, handler: usize) -> std::io::Result<libc::sigaction> {
    // SAFETY: zeroed sigaction is valid; we fill in handler, flags and an empty mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // NODEFER: a probe hit inside a handler raises SIGTRAP again; blocked, the kernel would
    // kill the process instead of delivering it. ONSTACK only for faults (a stack overflow
    // must be handled on the alternate stack): the trap handler runs on the thread's own
    // stack, because the small alternate stacks threads get (Rust's std installs one per
    // thread) cannot hold a trap frame, the handlers and a nested fault frame.
    // The same holds for the safepoint signal, whose handler scans the stack.
    let onstack = if FAULT_SIGNALS.contains(&sig) { libc::SA_ONSTACK } else { 0 };
    action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART | onstack;
    // SAFETY: `action.sa_mask` is a valid sigset to initialize.
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        for safepoint in crate::safepoint::safepoint_signals() {
            libc::sigaddset(&mut action.sa_mask, safepoint);
        }
    }
    let mut old: libc::sigaction = unsafe_zeroed();
    // SAFETY: both pointers are valid sigaction structs. PREVIOUS[sig] is written before
    // INSTALLED is set, under the install lock: `chain` reads it for signals whose handler is
    // dprobe's, after this store.
    unsafe {
        if libc::sigaction(sig, &action, &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_previous(sig, &words_of(&old));
    crate::interrupted::learn_restorer(sig);
    INSTALLED[sig as usize].store(true, Ordering::Release);
    Ok(old)
}

/// The signals dprobe installed its handlers for (a trap, the faults, the safepoint signal),
/// as a kernel signal set (bit N-1 for signal N). Async-signal-safe.
pub(crate) fn dprobes_signals() -> u64 {
    (1..=64usize).filter(|&sig| INSTALLED[sig].load(Ordering::Acquire)).fold(0, |set, sig| set | 1 << (sig - 1))
}

/// Whether `handler` is still the handler of `sig`: a program may have installed its own
/// since. Asked of the kernel with the system call itself (the C library's `sigaction` may be
/// probed).
pub(crate) fn handler_in_place(sig: libc::c_int, handler: SigInfoHandler) -> bool {
    handler_in_place_at(sig, handler as usize)
}

/// [`handler_in_place`] for the handler at address `handler`.
pub(crate) fn handler_in_place_at(sig: libc::c_int, handler: usize) -> bool {
    crate::sys::swap_action(sig, None).is_some_and(|[now, ..]| now == handler as u64)
}

fn unsafe_zeroed() -> libc::sigaction {
    // SAFETY: `sigaction` is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// How a signal that falls to the default action is delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeliver {
    /// Return: the faulting instruction runs again and faults under the default action.
    Refault,
    /// `raise` it: the trap or emulated fault is behind us.
    Raise,
}

/// Whether the program had a handler function (not the default, not "ignore") for `sig`.
pub fn has_program_handler(sig: libc::c_int) -> bool {
    let prev = previous(sig);
    prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN
}

/// Whether a program's `sigaction` for `sig` is answered by [`program_installs`]: a signal
/// whose handler is dprobe's and passes the program's own signals on (the trap and the fault
/// signals; not the safepoint's: a program's handler of its own takes its place, and the
/// safepoints see it). Async-signal-safe.
pub(crate) fn answers_for(sig: libc::c_int) -> bool {
    synchronous(sig) && INSTALLED[sig as usize].load(Ordering::Acquire)
}

/// Whether the program set `sig` to be ignored ("ignore", as dprobe passes its signals on,
/// where dprobe's handler took the signal over): a disposition an `execve` keeps, which the
/// kernel's (dprobe's handler) would not pass on. Async-signal-safe.
pub fn program_ignores_outright(sig: libc::c_int) -> bool {
    INSTALLED[sig as usize].load(Ordering::Acquire) && previous(sig).sa_sigaction == libc::SIG_IGN
}

/// Whether the program's disposition of `sig` (as dprobe passes its signals on) ignores it:
/// "ignore", or the default where that is to ignore it.
pub(crate) fn program_ignores(sig: libc::c_int) -> bool {
    match previous(sig).sa_sigaction {
        libc::SIG_IGN => true,
        libc::SIG_DFL => ignored_by_default(sig),
        _ => false,
    }
}

/// A program's `sigaction(sig, new, old)` for a signal it [`answers_for`]: `new` (if given)
/// becomes the program's disposition, to which dprobe's handler passes the program's own
/// signals; nothing is installed. The program's disposition as it stood (the `old` to
/// answer). Async-signal-safe.
pub(crate) fn program_installs(sig: libc::c_int, new: Option<&[u64; ACTION_WORDS]>) -> [u64; ACTION_WORDS] {
    let old = words_of(&previous(sig));
    if let Some(new) = new {
        // As the C library hands it to the kernel, and so back in a later `old`: with its
        // signal-return stub as the restorer (the one it gave dprobe's own action).
        let mut new = *new;
        new[FLAGS_WORD] |= SA_RESTORER;
        new[RESTORER_WORD] = crate::blocked::restorer(sig);
        set_previous(sig, &new);
    }
    old
}

/// Words of the C library's `struct sigaction`: its mask's first word (signals 1 to 64),
/// after the handler; its flags (an `int`, then padding) and its restorer, after the
/// 128-byte mask.
const MASK_WORD: usize = 1;
const FLAGS_WORD: usize = 17;
const RESTORER_WORD: usize = 18;
const _: () = assert!(std::mem::offset_of!(libc::sigaction, sa_mask) == MASK_WORD * 8);
const _: () = assert!(std::mem::offset_of!(libc::sigaction, sa_flags) == FLAGS_WORD * 8);
const _: () = assert!(std::mem::offset_of!(libc::sigaction, sa_restorer) == RESTORER_WORD * 8);

/// The flag that says an action has a restorer (`<asm/signal.h>`).
const SA_RESTORER: u64 = 0x0400_0000;

/// Pass a signal that is not dprobe's to the disposition the program had before.
///
/// For the default action on a synchronous trap or fault, the default is restored and the
/// signal delivered again, so the program ends exactly as it would have without dprobe.
///
/// # Safety
/// Call only from a dprobe signal handler, with a valid `info` for `sig` and the kernel's
/// `uc`.
pub unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void, redeliver: Redeliver) {
    let prev = previous(sig);
    // Sent by a process (`raise`, `kill`, `pthread_kill`, `sigqueue`: a code of zero or
    // below), not by a fault: returning does not bring it back, and ignoring it is allowed.
    // SAFETY: the kernel's `info` for this signal, when given.
    let sent = !info.is_null() && unsafe { (*info).si_code } <= 0;
    match prev.sa_sigaction {
        // Ignored, as it would have been without dprobe: a signal sent, or one the kernel
        // sends that is no fault or trap of the thread's (`SIGURG` for a socket's
        // out-of-band data).
        libc::SIG_IGN if sent || !synchronous(sig) => {}
        // Its default is to ignore it (the safepoint signal, `SIGURG`).
        libc::SIG_DFL if ignored_by_default(sig) => {}
        libc::SIG_DFL | libc::SIG_IGN => {
            // A synchronous fault or trap cannot be ignored: restore the default and deliver
            // it again (a sent signal too: it is blocked until this handler returns, and then
            // ends the program as it would have).
            // The system call itself: the C library's `sigaction` may be probed, and its
            // probe answers for dprobe's signals without installing anything.
            crate::sys::swap_action(sig, Some(&[libc::SIG_DFL as u64, 0, 0, 0]));
            if redeliver == Redeliver::Raise || sent {
                // SAFETY: raise is async-signal-safe.
                unsafe { libc::raise(sig) };
            }
        }
        handler => {
            let before = as_the_kernel_delivers(sig, &prev);
            let _program = crate::trap::ProgramHandler::enter();
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the program installed this SA_SIGINFO handler for `sig`; we call it
                // as the kernel would have, with the same arguments.
                let f: SigInfoHandler = unsafe { std::mem::transmute::<usize, SigInfoHandler>(handler) };
                f(sig, info, uc);
            } else {
                // SAFETY: a plain `void (*)(int)` handler installed by the program.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler) };
                f(sig);
            }
            // As its `rt_sigreturn` would (dprobe's handler returns with its own next).
            crate::sys::set_signal_mask(before);
        }
    }
}

/// Whether `sig` is raised by the thread's own instruction (a fault or a trap).
fn synchronous(sig: libc::c_int) -> bool {
    sig == libc::SIGTRAP || FAULT_SIGNALS.contains(&sig)
}

/// Whether `sig`'s default action is to ignore it.
fn ignored_by_default(sig: libc::c_int) -> bool {
    [libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH].contains(&sig)
}

/// What the kernel does as it delivers `sig` to the program's `action`, done before dprobe's
/// handler calls it: the action's mask, and `sig` itself unless `SA_NODEFER`, are blocked
/// while it runs (`SIGTRAP` aside, kept open as `handler_masks.rs` keeps it: a probe hit in
/// the handler traps); an `SA_RESETHAND` action is reset to the default first, so that a
/// crash reporter that returns from its fault handler dies of the fault that comes again,
/// rather than catching it for ever. Returns the mask to put back once the handler returns.
/// Async-signal-safe.
fn as_the_kernel_delivers(sig: libc::c_int, action: &libc::sigaction) -> u64 {
    if action.sa_flags & libc::SA_RESETHAND != 0 {
        set_previous(sig, &words_of(&unsafe_zeroed()));
    }
    let mut blocked = words_of(action)[MASK_WORD];
    if action.sa_flags & libc::SA_NODEFER == 0 {
        blocked |= 1 << (sig - 1);
    }
    blocked &= !(1u64 << (libc::SIGTRAP - 1));
    let before = crate::sys::signal_mask();
    crate::sys::set_signal_mask(before | blocked);
    before
}
