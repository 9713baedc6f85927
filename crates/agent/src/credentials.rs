//! The agent's thread takes on the capabilities of the program's thread that changes its ids.
//!
//! A thread's capabilities, its "keep capabilities" flag (`PR_SET_KEEPCAPS`) and its secure
//! bits are its own; a new thread starts with its creator's. The kernel's user and group ids
//! are per thread too, so when a program changes them (`setuid`, `setresgid`, `setgroups`...)
//! the C library has every thread of the process make the same system call, and aborts the
//! program when they did not all succeed or all fail alike. A program that keeps capabilities
//! across such a change sets them on its own thread alone (`setpriv --reuid`, a daemon that
//! binds a low port and drops to its user: `PR_SET_KEEPCAPS`, `setresuid`, `capset`, then
//! `setresgid`); the agent's thread, left with its own, failed the later call the program's
//! thread succeeded in, and the program was killed by `SIGABRT`.
//!
//! So before each such call, the calling thread's capabilities, flag and bits are given to
//! the agent's thread. A probe at the entry of each of the C library's functions that change
//! ids compares them with the agent's thread's (three system calls, no wait when they agree);
//! when they differ it sends the call to a stub that keeps the call's arguments, posts what
//! the thread has, rings the agent's doorbell and waits (outside any hit, at most about two
//! seconds) until the agent's thread took them on, then enters the function again (its probe
//! lets it in). The agent's thread takes on only what the kernel lets it: it started with the
//! capabilities of the program's thread that loaded it, which a later change of the
//! program's can only narrow or move within.
//!
//! A forked child's agent thread serves the child's calls (`child.rs`). Not covered: ids
//! changed with the system call itself (not through the C library: its threads are not all
//! changed either), and a thread's own seccomp filter or bounding set.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering::*};
use std::sync::Arc;

use dprobe_inproc::raw_calls;
use dprobe_inproc::{register, register_all, Kprobe, PreAction, Probe, Regs};

use crate::hit::on_agent_thread;
use crate::requests::Requests;
use crate::shm::Shm;

/// The C library's functions that change the ids of every thread.
const ID_CHANGES: [&str; 9] = [
    "libc:setuid",
    "libc:setgid",
    "libc:seteuid",
    "libc:setegid",
    "libc:setreuid",
    "libc:setregid",
    "libc:setresuid",
    "libc:setresgid",
    "libc:setgroups",
];

/// What of a thread's own credentials decides whether an id change succeeds: its capability
/// sets (as `capget` lays them out), its "keep capabilities" flag and its secure bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Own {
    caps: [u32; 6],
    keep: u32,
    bits: u32,
}

impl Own {
    /// The calling thread's.
    fn read() -> Option<Own> {
        let caps = raw_calls::capget(0)?;
        let keep = raw_calls::prctl(libc::PR_GET_KEEPCAPS, 0);
        let bits = raw_calls::prctl(libc::PR_GET_SECUREBITS, 0);
        (keep >= 0 && bits >= 0).then_some(Own { caps, keep: keep as u32, bits: bits as u32 })
    }

    fn store(&self, words: &[AtomicU32; 8]) {
        for (word, value) in words.iter().zip(self.caps.iter().chain([&self.keep, &self.bits])) {
            word.store(*value, Release);
        }
    }

    /// Keep the flag and bits as the agent thread's (read on that thread).
    fn keep_as_agents(&self) {
        AGENT_KEEP.store(self.keep, Release);
        AGENT_BITS.store(self.bits, Release);
    }

    fn load(words: &[AtomicU32; 8]) -> Own {
        let w: [u32; 8] = std::array::from_fn(|i| words[i].load(Acquire));
        Own { caps: [w[0], w[1], w[2], w[3], w[4], w[5]], keep: w[6], bits: w[7] }
    }

    /// Take these on, on the calling thread (the agent's): the bits and the flag first, while
    /// its capabilities allow them, then the capabilities.
    fn take_on(&self, had: Own) {
        if self.bits != had.bits {
            raw_calls::prctl(libc::PR_SET_SECUREBITS, u64::from(self.bits));
        }
        if self.keep != had.keep {
            raw_calls::prctl(libc::PR_SET_KEEPCAPS, u64::from(self.keep));
        }
        if self.caps != had.caps {
            raw_calls::capset(&self.caps);
        }
    }
}

/// The process whose agent thread serves (a forked child's calls go on at once).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// The session's shared memory, whose doorbell a caller rings, while the probes are placed.
static SHM: AtomicPtr<Shm> = AtomicPtr::new(std::ptr::null_mut());
/// The agent's thread: its id, and its flag and bits as it last read them. Its capabilities
/// change with every id change of the process (each thread's, by the same rules), so a caller
/// reads those afresh (`capget` of another thread); its flag and bits change only when it
/// sets them.
static AGENT_TID: AtomicI32 = AtomicI32::new(0);
static AGENT_KEEP: AtomicU32 = AtomicU32::new(0);
static AGENT_BITS: AtomicU32 = AtomicU32::new(0);
/// What a caller asks it to take on.
static ASKED_FOR: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
/// Requests made, and answered by the agent's thread.
static REQUESTS: Requests = Requests::new();
/// One caller at a time posts a request (1: taken).
static POSTING: AtomicU32 = AtomicU32::new(0);
/// The probes are placed and the agent's thread answers.
static SERVING: AtomicBool = AtomicBool::new(false);
/// Callers ringing the doorbell now.
static RINGING: AtomicU32 = AtomicU32::new(0);

/// The probes that have the agent's thread take on a caller's capabilities before an id
/// change; removed when dropped.
pub(crate) struct KeptAlike {
    probes: Vec<Probe>,
}

impl Drop for KeptAlike {
    fn drop(&mut self) {
        SERVING.store(false, SeqCst);
        self.probes.clear();
        // A caller that saw the agent serving rings its doorbell: the memory is let go after.
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        for _ in 0..1000 {
            if RINGING.load(SeqCst) == 0 {
                break;
            }
            raw_calls::futex_wait(&RINGING, RINGING.load(SeqCst), &pause, true);
        }
        SHM.store(std::ptr::null_mut(), SeqCst);
        // A caller still waiting goes on.
        REQUESTS.answer_all();
    }
}

/// Place the probes, on the agent's thread (whose credentials are read now), the doorbell
/// rung being `shm`'s. Functions the C library lacks are left out.
pub(crate) fn keep_alike(shm: &Arc<Shm>) -> Option<KeptAlike> {
    let asked = probes(shm)?;
    // One batch (one round of code changes); where one function is missing, each on its own.
    let probes = register_all(asked).unwrap_or_else(|_| {
        ID_CHANGES.iter().filter_map(|f| register(Kprobe::symbol(f).pre(at_id_change)).ok()).collect()
    });
    Some(KeptAlike::of(probes))
}

/// The probes [`keep_alike`] places, for a batch of the caller's, this thread's credentials
/// read now; `None` where they cannot be read. [`KeptAlike::of`] takes them once placed.
pub(crate) fn probes(shm: &Arc<Shm>) -> Option<Vec<Kprobe>> {
    Own::read()?.keep_as_agents();
    AGENT_TID.store(raw_calls::gettid(), Release);
    SHM.store(Arc::as_ptr(shm).cast_mut(), SeqCst);
    OWNER.store(raw_calls::getpid(), Release);
    Some(ID_CHANGES.iter().map(|f| Kprobe::symbol(f).pre(at_id_change)).collect())
}

impl KeptAlike {
    /// The probes [`probes`] gave, placed: the agent's thread answers from now on.
    pub(crate) fn of(probes: Vec<Probe>) -> KeptAlike {
        SERVING.store(true, SeqCst);
        KeptAlike { probes }
    }
}

/// In a forked child, first thing on its agent thread: serve the child's id changes (the
/// probes and the shared memory are the child's copies), this thread's credentials read now
/// (its creator's, the child's only other thread, which has changed nothing yet: it waits in
/// [`await_child_agent`]).
pub(crate) fn serve_here() {
    // No caller of the child's waits yet: what the parent's were doing is not the child's.
    POSTING.store(0, Release);
    REQUESTS.forget();
    if let Some(own) = Own::read() {
        own.keep_as_agents();
        AGENT_TID.store(raw_calls::gettid(), Release);
        OWNER.store(raw_calls::getpid(), Release);
    }
    CHILD_AGENT_READY.store(1, Release);
    raw_calls::futex_wake(&CHILD_AGENT_READY, true);
}

/// The child's agent thread took over ([`serve_here`]).
static CHILD_AGENT_READY: AtomicU32 = AtomicU32::new(0);

/// In a forked child, on its thread, before `fork` returns there, once its agent thread is
/// started: wait until that thread serves the child's id changes (at most about 100 ms), so
/// that none the child makes at once (a daemon's worker dropping to its user) goes by before.
pub(crate) fn await_child_agent() {
    if !SERVING.load(Acquire) {
        return;
    }
    let tick = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    for _ in 0..100 {
        if CHILD_AGENT_READY.load(Acquire) != 0 {
            return;
        }
        raw_calls::futex_wait(&CHILD_AGENT_READY, 0, &tick, true);
    }
}

/// In a forked child, before its agent thread starts: not taken over yet.
pub(crate) fn child_agent_starting() {
    CHILD_AGENT_READY.store(0, Release);
}

/// A request waiting for the agent's thread, if one is.
pub(crate) fn pending() -> Option<u32> {
    REQUESTS.pending()
}

/// What the agent's thread has now (`None`: its capabilities could not be read).
fn agent_has() -> Option<Own> {
    Some(Own {
        caps: raw_calls::capget(AGENT_TID.load(Acquire))?,
        keep: AGENT_KEEP.load(Acquire),
        bits: AGENT_BITS.load(Acquire),
    })
}

/// On the agent's thread: take on what request `asked` posted, and answer it.
pub(crate) fn answer(asked: u32) {
    if let Some(had) = Own::read() {
        Own::load(&ASKED_FOR).take_on(had);
    }
    // What the kernel let it take on (all of it, normally).
    if let Some(now) = Own::read() {
        now.keep_as_agents();
    }
    REQUESTS.answer(asked);
}

/// At the entry of a function that changes ids: go on when the agent's thread has the
/// caller's credentials already, else wait for it first (in the stub).
fn at_id_change(regs: &mut Regs) -> PreAction {
    if dprobe_inproc::reentered(regs, let_in_token()) {
        return PreAction::Continue;
    }
    if !SERVING.load(Acquire) || on_agent_thread(regs.rsp) || OWNER.load(Acquire) != raw_calls::getpid() {
        return PreAction::Continue;
    }
    if Own::read().is_none_or(|own| Some(own) == agent_has()) {
        return PreAction::Continue;
    }
    dprobe_inproc::wait_then_reenter(regs, ask_and_wait)
}

/// Run by the stub (`dprobe_inproc::wait_then_reenter`), on the program's thread outside any
/// hit: post the thread's credentials, ring, and wait until the agent's thread took them on
/// (each wait bounded); returns the token the entry recognises. No call of the C library
/// (`raw_calls`).
extern "C" fn ask_and_wait() -> u64 {
    let tick = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    let mut posted = false;
    for _ in 0..20 {
        if POSTING.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
            posted = true;
            break;
        }
        raw_calls::futex_wait(&POSTING, 1, &tick, true);
    }
    if !posted {
        return let_in_token();
    }
    if let Some(own) = Own::read().filter(|_| SERVING.load(Acquire)) {
        own.store(&ASKED_FOR);
        let asked = REQUESTS.ask();
        RINGING.fetch_add(1, SeqCst);
        if SERVING.load(SeqCst) {
            // SAFETY: `SHM` is the session's shared memory while the probes are placed: the
            // session drops `KeptAlike` before the memory, and its drop clears `SHM` only once
            // no thread rings (`RINGING`) after it stopped serving.
            if let Some(shm) = unsafe { SHM.load(SeqCst).as_ref() } {
                shm.ring();
            }
        }
        RINGING.fetch_sub(1, SeqCst);
        REQUESTS.wait(asked, || SERVING.load(Acquire));
    }
    POSTING.store(0, Release);
    raw_calls::futex_wake(&POSTING, true);
    let_in_token()
}

/// What [`ask_and_wait`] returns (the stub leaves it in `r11`): a value of this process that a
/// caller's `r11` does not hold by chance.
fn let_in_token() -> u64 {
    0x5e71_d0c5_0000_0000 ^ (&REQUESTS as *const Requests as u64)
}
