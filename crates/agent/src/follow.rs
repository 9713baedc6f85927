//! Probes on a library the program loads later: placed when the dynamic loader maps it, removed
//! before it unmaps it (`dlclose`), and placed again when it is loaded again, wherever it lands.
//!
//! The loader calls `_dl_debug_state` (the `r_brk` of the `r_debug` protocol debuggers use)
//! before it maps or unmaps objects and once the list of objects is consistent again, with
//! the loader's lock held. An in-process probe there sends the loading thread, instead of that
//! empty function, to [`loader_changed`]: it tells the agent's thread through a pipe and
//! waits until that thread has placed or removed the probes concerned, so that the library's
//! constructors and first calls are already probed, and nothing stays in code being unmapped.
//! (A pipe, not an eventfd: a pipe's ends are known by their inode, so a number the program
//! closed and reused is never written to; see `dprobe_inproc::own_files`. The agent's thread
//! also looks for a notification every time round, so a pipe the program closed delays the
//! loading thread by one round at most.)
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
use dprobe_inproc::own_files::{self, AtomicFileId, FileId};
use dprobe_inproc::raw_calls;
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

/// The pipe's end the agent's thread reads (-1: not following).
static EVENT: AtomicI32 = AtomicI32::new(-1);
/// The pipe's end the loading thread writes to.
static NUDGE: AtomicI32 = AtomicI32::new(-1);
/// The pipe's identity (both ends share it).
static PIPE: AtomicFileId = AtomicFileId::new();
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

/// Start following the loader (once per session): the pipe's end to poll, or an error.
pub(crate) fn start() -> std::io::Result<i32> {
    let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    if hook.is_none() {
        let mut ends = [-1i32; 2];
        // SAFETY: pipe2 fills the two descriptors it is given.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [fd, nudge] = ends.map(own_files::keep_high);
        let Some(id) = FileId::of(fd) else {
            [fd, nudge].into_iter().for_each(own_files::close);
            return Err(std::io::Error::other("the loader's pipe is gone"));
        };
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
                [fd, nudge].into_iter().for_each(own_files::close);
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        OWNER.store(std::process::id(), Release);
        PIPE.store(id);
        NUDGE.store(nudge, Release);
        EVENT.store(fd, Release);
    }
    Ok(EVENT.load(Acquire))
}

/// Whether the loader is changing its list of objects now (mapping or unmapping them).
pub(crate) fn loader_busy() -> bool {
    // SAFETY: the loader's `_r_debug`, which it updates before each notification.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) != RT_CONSISTENT }
}

/// The pipe's end to poll, if following.
pub(crate) fn event_fd() -> Option<i32> {
    let fd = EVENT.load(Acquire);
    (fd >= 0 && HOOK.lock().is_ok_and(|h| h.is_some())).then_some(fd)
}

/// Stop following: the probe on `r_brk` removed, a waiting thread let go.
pub(crate) fn stop() {
    let fd = EVENT.swap(-1, AcqRel);
    let nudge = NUDGE.swap(-1, AcqRel);
    if let Some(p) = HOOK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        drop(p);
    }
    answer(ASKED.load(Acquire));
    for end in [fd, nudge].into_iter().filter(|&end| end >= 0 && PIPE.is(end)) {
        // The pipe made by `start`, no longer published (a number the program closed and
        // reused is its own, and stays open).
        own_files::close(end);
    }
}

/// The `r_state` of a notification waiting for an answer, if one is (the pipe is emptied).
pub(crate) fn pending() -> Option<(u32, i32)> {
    let fd = EVENT.load(Acquire);
    let mut bytes = [0u8; 64];
    let nudged = fd >= 0 && PIPE.is(fd) && { raw_calls::read(fd, &mut bytes) > 0 };
    let asked = ASKED.load(Acquire);
    (nudged || asked > ANSWERED.load(Acquire)).then(|| (asked, STATE.load(Acquire)))
}

/// Let the loading thread that asked `asked` go on.
pub(crate) fn answer(asked: u32) {
    ANSWERED.fetch_max(asked, AcqRel);
    raw_calls::futex_wake(&ANSWERED, true);
}

/// Run by a loading thread in place of `_dl_debug_state`: tell the agent's thread and wait
/// for it (at most about two seconds). The program's thread: no call of the C library, whose
/// functions may be probed (`raw_calls`).
extern "C" fn loader_changed() {
    let fd = EVENT.load(Acquire);
    if fd < 0 || OWNER.load(Acquire) != raw_calls::getpid() as u32 {
        return;
    }
    // SAFETY: the loader's `_r_debug`, updated by the loader before this call.
    let state = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) };
    STATE.store(state, Release);
    // The loader's lock is held: one loading thread at a time comes here.
    let asked = ASKED.fetch_add(1, AcqRel) + 1;
    let nudge = NUDGE.load(Acquire);
    if PIPE.is(nudge) {
        // Non-blocking: a full pipe has a notification waiting already.
        raw_calls::write(nudge, &[1u8]);
    }
    let timeout = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    for _ in 0..20 {
        let answered = ANSWERED.load(Acquire);
        if answered >= asked || EVENT.load(Acquire) < 0 {
            return;
        }
        raw_calls::futex_wait(&ANSWERED, answered, &timeout, true);
    }
}
