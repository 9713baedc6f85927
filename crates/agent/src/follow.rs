//! Probes on a library the program loads later: placed when the dynamic loader maps it, removed
//! before it unmaps it (`dlclose`), and placed again when it is loaded again, wherever it lands.
//!
//! The loader calls `_dl_debug_state` (the `r_brk` of the `r_debug` protocol debuggers use)
//! before it maps or unmaps objects and once the list of objects is consistent again, with
//! the loader's lock held. An in-process probe there sends the loading thread, instead of that
//! empty function, to [`loader_changed`]: it tells the agent's thread through an eventfd and
//! waits until that thread has placed or removed the probes concerned, so that the library's
//! constructors and first calls are already probed, and nothing stays in code being unmapped.
//! The wait is bounded: should the agent's thread not answer, the program goes on (the probes
//! of that load are then placed late or not at all). The probe's handler itself only moves
//! the program counter: it allocates nothing and waits for nothing (a handler that waited
//! would hold up the registrations it waits for).
//!
//! Placing and removing take what registration takes (reading the process's maps and the
//! library's symbols), never the loader's lock, which the waiting thread holds.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};
use std::sync::Mutex;

use dprobe_core::{Kprobe, PreAction};
use dprobe_inproc::{register, Addr, Probe};

use crate::hit::on_agent_thread;
use crate::shm::MAX_PROBES;

/// The loader's `struct r_debug` (`<link.h>`).
#[repr(C)]
struct RDebug {
    version: i32,
    map: *const u8,
    brk: usize,
    state: i32,
    ldbase: usize,
}

extern "C" {
    /// The loader's own `r_debug`, which it updates before each call of `r_brk`.
    static _r_debug: RDebug;
}

/// `r_state`: objects are about to be removed.
pub(crate) const RT_DELETE: i32 = 2;
/// `r_state`: the list of objects is consistent (after an addition or a removal).
pub(crate) const RT_CONSISTENT: i32 = 0;

/// The eventfd the loading thread writes to (-1: not following).
static EVENT: AtomicI32 = AtomicI32::new(-1);
/// The process whose agent thread reads [`EVENT`] (a forked child does not wait on it).
static OWNER: AtomicU32 = AtomicU32::new(0);
/// Notifications sent, and answered, by the agent's thread.
static ASKED: AtomicU32 = AtomicU32::new(0);
static ANSWERED: AtomicU32 = AtomicU32::new(0);
/// The `r_state` of the last notification.
static STATE: AtomicI32 = AtomicI32::new(RT_CONSISTENT);
/// The probe on `r_brk`, while some probe follows a library.
static HOOK: Mutex<Option<Probe>> = Mutex::new(None);

/// Figures of probes removed at a library's unloading, added to those of their next placing
/// (missed, not handled, abandoned), by probe index.
pub(crate) static CARRIED: [[AtomicU64; 3]; MAX_PROBES] =
    [const { [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)] }; MAX_PROBES];

/// Start following the loader (once per session): the eventfd to poll, or an error.
pub(crate) fn start() -> std::io::Result<i32> {
    let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    if hook.is_none() {
        // SAFETY: a new eventfd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the loader's `_r_debug` lives as long as the process; `r_brk` is set once
        // the loader started the program.
        let brk = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.brk)) } as u64;
        let probe = register(Kprobe::addr(Addr(brk)).pre(|regs| {
            if on_agent_thread(regs.rsp) || EVENT.load(Acquire) < 0 {
                return PreAction::Continue;
            }
            // `_dl_debug_state` does nothing but return: run `loader_changed` instead, as if
            // called in its place (same stack, same return address).
            regs.rip = loader_changed as *const () as u64;
            PreAction::SkipInstruction
        }));
        match probe {
            Ok(p) => *hook = Some(p),
            Err(e) => {
                // SAFETY: closes the eventfd made above.
                unsafe { libc::close(fd) };
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        OWNER.store(std::process::id(), Release);
        EVENT.store(fd, Release);
    }
    Ok(EVENT.load(Acquire))
}

/// Whether the loader is changing its list of objects now (mapping or unmapping them).
pub(crate) fn loader_busy() -> bool {
    // SAFETY: the loader's `_r_debug`, which it updates before each notification.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) != RT_CONSISTENT }
}

/// The eventfd to poll, if following.
pub(crate) fn event_fd() -> Option<i32> {
    let fd = EVENT.load(Acquire);
    (fd >= 0 && HOOK.lock().is_ok_and(|h| h.is_some())).then_some(fd)
}

/// Stop following: the probe on `r_brk` removed, a waiting thread let go.
pub(crate) fn stop() {
    let fd = EVENT.swap(-1, AcqRel);
    if let Some(p) = HOOK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        drop(p);
    }
    answer(ASKED.load(Acquire));
    if fd >= 0 {
        // SAFETY: the eventfd made by `start`, no longer published.
        unsafe { libc::close(fd) };
    }
}

/// The `r_state` of a notification waiting for an answer, if one is (the eventfd is read).
pub(crate) fn pending() -> Option<(u32, i32)> {
    let fd = EVENT.load(Acquire);
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into `n` from our eventfd.
    let got = unsafe { libc::read(fd, std::ptr::addr_of_mut!(n).cast(), 8) };
    (got == 8).then(|| (ASKED.load(Acquire), STATE.load(Acquire)))
}

/// Let the loading thread that asked `asked` go on.
pub(crate) fn answer(asked: u32) {
    ANSWERED.fetch_max(asked, AcqRel);
    // SAFETY: wakes the waiters on an atomic we own.
    unsafe { libc::syscall(libc::SYS_futex, ANSWERED.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX) };
}

/// Run by a loading thread in place of `_dl_debug_state`: tell the agent's thread and wait
/// for it (at most about two seconds).
extern "C" fn loader_changed() {
    let fd = EVENT.load(Acquire);
    if fd < 0 || OWNER.load(Acquire) != std::process::id() {
        return;
    }
    // SAFETY: the loader's `_r_debug`, updated by the loader before this call.
    let state = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) };
    STATE.store(state, Release);
    // The loader's lock is held: one loading thread at a time comes here.
    let asked = ASKED.fetch_add(1, AcqRel) + 1;
    let one = 1u64;
    // SAFETY: writes 8 bytes to our eventfd.
    unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    let timeout = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    for _ in 0..20 {
        let answered = ANSWERED.load(Acquire);
        if answered >= asked || EVENT.load(Acquire) < 0 {
            return;
        }
        // SAFETY: waits on an atomic we own while it still holds `answered`, with a timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                ANSWERED.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                answered,
                &timeout,
            )
        };
    }
}
