//! Probes on a library the program loads later: placed when the dynamic loader maps it, removed
//! before it unmaps it (`dlclose`), and placed again when it is loaded again, wherever it lands.
//!
//! The loader calls `_dl_debug_state` (the `r_brk` of the `r_debug` protocol debuggers use)
//! before it maps or unmaps objects and once the list of objects is consistent again, with
//! the loader's lock held. An in-process probe there rings the agent's doorbell (a futex word
//! in the shared memory, `Shm::ring`, which the agent's thread waits on) and sends the loading
//! thread, instead of that empty function, to [`loader_changed`]: it waits until the agent's
//! thread has placed or removed the probes concerned, so that the library's constructors and
//! first calls are already probed, and nothing stays in code being unmapped. (A doorbell in
//! memory, not a pipe: the agent's descriptors are in a table of its own, which the
//! program's threads do not see.)
//! The wait is bounded: should the agent's thread not answer, the program goes on (the probes
//! of that load are then placed late or not at all). The probe's handler itself only rings
//! and moves the program counter: it allocates nothing and waits for nothing (a handler that
//! waited would hold up the registrations it waits for).
//!
//! Placing and removing take what registration takes (reading the process's maps and the
//! library's symbols), never the loader's lock, which the waiting thread holds.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};

use dprobe_core::{Kprobe, PreAction};
use dprobe_inproc::raw_calls;
use dprobe_inproc::{register, Addr, Probe};

use crate::hit::on_agent_thread;
use crate::requests::Requests;
use crate::shm::{Shm, MAX_PROBES};

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

/// Loads are followed: a loading thread waits for the agent's thread.
static FOLLOWING: AtomicBool = AtomicBool::new(false);
/// The session's shared memory, whose doorbell the probe rings, while the probe is placed.
static SHM: AtomicPtr<Shm> = AtomicPtr::new(std::ptr::null_mut());
/// The process whose agent thread answers (a forked child's loads do not wait).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// Notifications sent, and answered by the agent's thread.
static REQUESTS: Requests = Requests::new();
/// The `r_state` of the last notification.
static STATE: AtomicI32 = AtomicI32::new(RT_CONSISTENT);
/// The probe on `r_brk`, while some probe follows a library.
static HOOK: Mutex<Option<Probe>> = Mutex::new(None);

/// Figures of probes removed at a library's unloading, added to those of their next placing
/// (missed, not handled, abandoned), by probe index.
pub(crate) static CARRIED: [[AtomicU64; 3]; MAX_PROBES] =
    [const { [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)] }; MAX_PROBES];

/// Start following the loader (once per session), the doorbell rung being `shm`'s.
pub(crate) fn start(shm: &Arc<Shm>) -> std::io::Result<()> {
    let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    if hook.is_none() {
        SHM.store(Arc::as_ptr(shm).cast_mut(), Release);
        OWNER.store(raw_calls::getpid(), Release);
        // SAFETY: the loader's `_r_debug` lives as long as the process; `r_brk` is set once
        // the loader started the program.
        let brk = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.brk)) } as u64;
        let probe = register(Kprobe::addr(Addr(brk)).pre(|regs| {
            let owner = OWNER.load(Acquire) == raw_calls::getpid();
            if on_agent_thread(regs.rsp) || !FOLLOWING.load(Acquire) || !owner {
                return PreAction::Continue;
            }
            // SAFETY: the loader's `_r_debug`, updated by the loader before this call.
            let state = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) };
            STATE.store(state, Release);
            // The loader's lock is held: one loading thread at a time comes here.
            REQUESTS.ask();
            // SAFETY: `SHM` is the session's shared memory while this probe is placed: `stop`
            // removes the probe, which waits for its running handlers, before it lets go of it.
            if let Some(shm) = unsafe { SHM.load(Acquire).as_ref() } {
                shm.ring();
            }
            // `_dl_debug_state` does nothing but return: run `loader_changed` instead, as if
            // called in its place (same stack, same return address).
            regs.rip = loader_changed as *const () as u64;
            PreAction::SkipInstruction
        }));
        match probe {
            Ok(p) => *hook = Some(p),
            Err(e) => {
                SHM.store(std::ptr::null_mut(), Release);
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        FOLLOWING.store(true, Release);
    }
    Ok(())
}

/// Whether the loader is changing its list of objects now (mapping or unmapping them).
pub(crate) fn loader_busy() -> bool {
    // SAFETY: the loader's `_r_debug`, which it updates before each notification.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(_r_debug.state)) != RT_CONSISTENT }
}

/// Stop following: the probe on `r_brk` removed, a waiting thread let go.
pub(crate) fn stop() {
    FOLLOWING.store(false, Release);
    if let Some(p) = HOOK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        drop(p);
    }
    SHM.store(std::ptr::null_mut(), Release);
    REQUESTS.answer_all();
}

/// The `r_state` of a notification waiting for an answer, if one is.
pub(crate) fn pending() -> Option<(u32, i32)> {
    REQUESTS.pending().map(|asked| (asked, STATE.load(Acquire)))
}

/// Let the loading thread that asked `asked` go on.
pub(crate) fn answer(asked: u32) {
    REQUESTS.answer(asked);
}

/// Run by a loading thread in place of `_dl_debug_state`, once the probe there asked: wait for
/// the agent's thread (at most about two seconds). The program's thread: no call of the C
/// library, whose functions may be probed (`raw_calls`).
extern "C" fn loader_changed() {
    // The loader's lock is still held: no other notification came since this thread's.
    REQUESTS.wait(REQUESTS.last(), || FOLLOWING.load(Acquire));
}
