//! dprobe asked before the program's `exec`, so that it need not watch the program all along.
//!
//! A program dprobe starts is followed into each program it executes (`exec`): the new one is
//! held where the agent can be loaded into it again. dprobe sees the `exec` as ptrace's
//! `PTRACE_EVENT_EXEC`, which needs the thread that makes it traced, and a traced thread
//! stops at every signal it receives, its `int3` hits among them (a `SIGTRAP` each): a hit
//! there cost a stop of dprobe's, about 35 µs, against 2 µs untraced.
//!
//! So the agent asks first: probes on the C library's `execve` and `execveat` (which `execv`,
//! `execvp`, `execl` and the others call) make the thread that calls one say so in the shared
//! memory, with its thread id, and wait until dprobe answers, at most [`PATIENCE`]. dprobe
//! seizes that thread with ptrace for its `exec` alone (the kernel reports an `exec` to the
//! tracer of the thread that makes it, whichever thread it is: that thread takes the process's
//! id as the others go), then answers; the `exec` runs traced and is held as before. A child
//! sharing the program's memory (a `vfork` or `posix_spawn` child, whose `exec` is its own)
//! and calls while dprobe does not wait for them go on at once. One thread is watched at a
//! time: another thread's call waits, within its patience, until the watched one is let go
//! (its `exec` failed), then asks. An `exec` made with the system call itself (`fexecve`, or not
//! through the C library) is not seen before it happens: dprobe says the new program is not
//! traced. An `exec` that fails (a file not found) returns: return probes on the same
//! functions (at their exits, jumps too) tell dprobe it may stop watching, and it lets the
//! program go (below); where they cannot be jumps, the program stays watched until its next
//! `exec` or the end of the trace.
//!
//! Children followed ask too, each in a gate of its own ([`child_asks`]): the programs they
//! execute get an agent of their own. A process dprobe attached to asks as a started one does:
//! the thread that asks is seized then, whoever's child the process is.
//!
//! The probes must be jump-optimized: a `posix_spawn` child resets the handlers of its signals,
//! dprobe's `SIGTRAP` handler among them, before it calls `execve`, and an `int3` there would
//! kill it. Where they cannot be, the agent does not ask, and dprobe watches the program all
//! along.
//!
//! The words (`Shm::exec_gate`): `open`, set while the agent asks, and `state`, a futex word:
//! [`IDLE`]; [`ASKING`] with the asking thread's id above its low byte (see [`asking`]; the
//! thread waits); [`CLAIMED`] (dprobe took the request: the
//! thread waits on, whatever its patience, until dprobe is done); [`WATCHED`] (dprobe watches
//! the program: the thread goes on, and so do its later calls); [`UNWATCH`] (its `exec`
//! failed: dprobe may stop watching); [`RELEASING`] (dprobe lets the program go, then moves
//! the word to `IDLE`, or back to `UNWATCH` or `WATCHED` where it could not). The asking
//! thread gives up by moving `ASKING` back to `IDLE`, and dprobe claims a request by moving
//! `ASKING` to `CLAIMED`, so that dprobe never seizes a program whose thread went on without
//! it. Likewise a call of an `exec` function that finds `UNWATCH` takes it back to `WATCHED`
//! (still watched, it goes on), and dprobe takes it by moving it to `RELEASING`, which a call
//! waits out before it asks, so that dprobe never lets go of a program whose `exec` it would
//! then miss.
//!
//! dprobe lets a program go after a failed `exec` once the state stayed `UNWATCH` a while
//! ([`RELEASE_AFTER`], so that `execvp`'s next try finds it still watched), and only where it
//! finds the watched thread outside a system call the kernel would restart: a detach wakes a
//! thread inside one, and a signal that came in that moment could leave the program waiting
//! on in its call (see `dprobe_ptrace`'s `let_go.rs`). It looks again later, a bounded number
//! of times ([`RELEASE_TRIES`], over about 2.5 s): a program that waits in a system call all
//! that time (a shell reading its next command) stays watched, as all along before. A thread
//! it finds at a new program's `exec` (a signal handler's) is followed.

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use dprobe_inproc::{
    register, register_all, register_kretprobe, Addr, InstanceData, Kprobe, Kretprobe, PreAction, Probe, Regs,
    ReturnMode, ReturnProbe,
};

use crate::shm::{ExecGateWords, Shm};
use dprobe_inproc::raw_calls;

/// How long a thread waits for dprobe to take its request before its `exec` goes on
/// unwatched.
pub(crate) const PATIENCE: Duration = Duration::from_secs(2);

/// `state`: nothing asked.
pub(crate) const IDLE: u32 = 0;
/// `state`'s low byte: a thread asks and waits; its id is above (see [`asking`]).
pub(crate) const ASKING: u32 = 1;
/// `state`: dprobe took the request and is seizing the thread.
pub(crate) const CLAIMED: u32 = 2;
/// `state`: dprobe watches the program for its `exec`.
pub(crate) const WATCHED: u32 = 3;
/// `state`: the watched program's `exec` failed; dprobe may let it go.
pub(crate) const UNWATCH: u32 = 4;
/// `state`: dprobe lets the program go.
pub(crate) const RELEASING: u32 = 5;
/// How long a failed `exec` leaves the program watched before dprobe tries to let it go.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_millis(10);
/// How many times dprobe looks for the watched thread outside a system call to let it go, each
/// twice as long after the one before (each look takes a blocked thread out of its call, which
/// the kernel restarts, as after any stop).
pub(crate) const RELEASE_TRIES: u32 = 8;

/// The shared memory whose words the probes' handler uses, while the gate is open.
static GATE: AtomicPtr<Shm> = AtomicPtr::new(std::ptr::null_mut());
/// The process whose threads ask (not a child sharing its memory).
static GATED_PID: AtomicI32 = AtomicI32::new(0);
/// The thread whose request dprobe answered last by watching it.
static WATCHED_TID: AtomicI32 = AtomicI32::new(0);

/// In `state` while a thread asks: the program ignores `SIGTRAP` (it set "ignore", which its
/// `exec` keeps, but the kernel's action is dprobe's handler, which the `exec` does not):
/// dprobe ignores it again in the program executed.
const TRAP_IGNORED: u32 = 1 << 31;

/// `state` while thread `tid` asks (thread ids are below 2^22, the kernel's `pid_max` limit),
/// with whether the program ignores `SIGTRAP`.
pub(crate) fn asking(tid: i32) -> u32 {
    let ignored = dprobe_inproc::program_ignores_outright(libc::SIGTRAP);
    ASKING | (tid as u32) << 8 | if ignored { TRAP_IGNORED } else { 0 }
}

/// The thread that asks, when `state` says one does.
pub(crate) fn asker(state: u32) -> Option<i32> {
    let tid = (state & !TRAP_IGNORED) >> 8;
    (state & 0xff == ASKING && tid != 0).then_some(tid as i32)
}

/// Whether the program that asks in `state` ignores `SIGTRAP` (see [`TRAP_IGNORED`]).
pub(crate) fn asker_ignores_trap(state: u32) -> bool {
    asker(state).is_some() && state & TRAP_IGNORED != 0
}

/// The gate's probes: before the `exec` functions, and at their exits (an `exec` that failed).
#[derive(Default)]
pub(crate) struct GateProbes {
    before: Vec<Probe>,
    failed: Vec<ReturnProbe>,
}

impl GateProbes {
    /// Whether none is placed.
    pub(crate) fn is_empty(&self) -> bool {
        self.before.is_empty()
    }
}

/// Place the probes that ask dprobe before an `exec` (`shm`'s words then say so): the
/// probes, or why they could not be placed as jumps.
pub(crate) fn open(shm: &Arc<Shm>) -> Result<GateProbes, String> {
    // (Until `GATE` is set, the probes' handlers let every call go on.) One batch (one round
    // of code changes); `execveat` is not in C libraries before 2.34.
    let both = [Kprobe::symbol("libc:execve").pre(asks), Kprobe::symbol("libc:execveat").pre(asks)];
    let before = match register_all(both.into()) {
        Ok(both) => both,
        Err(_) => vec![register(Kprobe::symbol("libc:execve").pre(asks)).map_err(|e| e.to_string())?],
    };
    let mut probes = GateProbes { before, failed: Vec::new() };
    if let Some(why) = probes.before.iter().find_map(|p| p.optimized().err()) {
        return Err(format!("the C library's execve is not jump-optimized: {why}"));
    }
    probes.failed = probes.before.iter().filter_map(|p| returns_jump(p.addr())).collect();
    GATED_PID.store(std::process::id() as i32, Relaxed);
    GATE.store(Arc::as_ptr(shm).cast_mut(), Release);
    shm.exec_gate().open.store(1, Release);
    Ok(probes)
}

/// A return probe on the `exec` function at `function` that says its call failed, placed at
/// the function's exits, if every probe in the function is a jump (an `int3` at an exit would
/// kill a `posix_spawn` child whose `exec` failed, were its mask to block `SIGTRAP`).
fn returns_jump(function: Addr) -> Option<ReturnProbe> {
    let probe = register_kretprobe(Kretprobe::addr(function).handler(failed)).ok()?;
    let ReturnMode::Exits { .. } = probe.return_mode() else { return None };
    let target = dprobe_inproc::resolve(&Kprobe::addr(function)).ok()?;
    let (start, end) = (target.function.start.0, target.function.start.0 + target.function.size);
    let mut inside = dprobe_inproc::list().into_iter().filter(|i| (start..end).contains(&i.addr.0));
    inside.all(|i| i.jump.is_ok()).then_some(probe)
}

/// Stop asking: the waiting thread goes on, then the probes are removed. In a forked child
/// (whose copy of the probes goes as it starts) the shared words are the parent's, left as
/// they are.
pub(crate) fn close(shm: &Shm, probes: GateProbes) {
    if std::process::id() as i32 == GATED_PID.load(Relaxed) {
        let words = shm.exec_gate();
        words.open.store(0, Release);
        wake(words.state);
    }
    drop(probes);
    GATE.store(std::ptr::null_mut(), Release);
}

/// dprobe answers no more (its trace ended, or it went away): every thread of the program
/// and every child waiting for an answer goes on at once, untraced, rather than out of its
/// patience, and none asks from now on. (The words are the program's and its forked
/// children's: any of them, or dprobe, may close them.)
pub(crate) fn close_for_everyone(shm: &Shm) {
    let words = shm.exec_gate();
    words.open.store(0, Release);
    wake(words.state);
    for i in 0..crate::shm::CHILD_GATES {
        wake(shm.child_gate(i).state);
    }
    // A child waiting for a free gate waits on the first one's holder.
    wake(shm.child_gate(0).pid);
}

/// Wake every thread waiting on `word` (a futex word of the shared memory).
pub(crate) fn wake(word: &AtomicU32) {
    // Shared (not private): dprobe wakes it from another process.
    raw_calls::futex_wake(word, false);
}

/// The calling thread's process and thread ids. Not the C library's: its `getpid` may be
/// probed, and this runs on the program's thread.
fn ids() -> (i32, i32) {
    (raw_calls::getpid(), raw_calls::gettid())
}

/// The gate's words, when called in the gated program (`pid`: the caller's process, not a
/// child sharing its memory) while the gate is open.
fn gate_words(pid: i32) -> Option<ExecGateWords<'static>> {
    let shm = GATE.load(Acquire);
    if shm.is_null() || pid != GATED_PID.load(Relaxed) {
        return None;
    }
    // SAFETY: `GATE` points at the session's shared memory from `open` until `close`, which
    // removes the probes (waiting for their running handlers) before the memory is dropped.
    let words = unsafe { &*shm }.exec_gate();
    (words.open.load(Acquire) != 0).then_some(words)
}

/// An `exec` function's exit: the call failed (one that works does not return). The watched
/// thread says dprobe may stop watching it, and goes on: a call of an `exec` function that
/// comes at once (`execvp` trying the next directory of `PATH`) takes that back.
fn failed(_: &mut Regs, _: &InstanceData) {
    let (pid, tid) = ids();
    if let Some(words) = gate_words(pid).filter(|_| tid == WATCHED_TID.load(Relaxed)) {
        let _ = words.state.compare_exchange(WATCHED, UNWATCH, AcqRel, Acquire);
    }
}

/// `execve`'s (or `execveat`'s) first instruction: the calling thread asks dprobe and waits
/// for its answer (see the module's comment).
fn asks(_: &mut Regs) -> PreAction {
    let (pid, tid) = ids();
    let Some(words) = gate_words(pid) else {
        if !child_asks(pid, tid) {
            count_a_childs_program();
        }
        return PreAction::Continue;
    };
    let start = raw_calls::monotonic_ns();
    let patient = || {
        words.open.load(Acquire) != 0 && raw_calls::monotonic_ns().saturating_sub(start) < PATIENCE.as_nanos() as u64
    };
    let mine = tid == WATCHED_TID.load(Relaxed);
    // Ask; after a failed `exec`, call the release off, or wait until it is done.
    let asks = asking(tid);
    while let Err(state) = words.state.compare_exchange(IDLE, asks, AcqRel, Acquire) {
        match state {
            // Still watched: it goes on.
            WATCHED if mine => return PreAction::Continue,
            UNWATCH if mine && words.state.compare_exchange(UNWATCH, WATCHED, AcqRel, Acquire).is_ok() => {
                return PreAction::Continue
            }
            UNWATCH if mine => {}
            // Another thread is watched, or asks: this one's turn comes once it is let go.
            _ if patient() => wait_a_slice(words.state, state),
            // No longer asking, or out of patience.
            _ => return PreAction::Continue,
        }
    }
    ring_tracer();
    if answered_watched(words.state, words.open, tid, start) {
        WATCHED_TID.store(tid, Relaxed);
    }
    PreAction::Continue
}

/// Ring dprobe's bell: it answers at once rather than at its next look.
fn ring_tracer() {
    // SAFETY: as in `gate_words`: the memory outlives the probes whose handler this is.
    if let Some(shm) = unsafe { GATE.load(Acquire).as_ref() } {
        shm.ring_tracer();
    }
}

/// Wait for dprobe's answer to thread `tid`, which asks in `state` (a gate's futex word) and
/// started asking at `start`: whether dprobe watches it. The thread gives up (moves its
/// request back to [`IDLE`]) once out of [`PATIENCE`] or when the gate (`open`) closes, but
/// not while dprobe has claimed the request: dprobe is seizing it then.
fn answered_watched(state: &AtomicU32, open: &AtomicU32, tid: i32, start: u64) -> bool {
    let patient =
        || open.load(Acquire) != 0 && raw_calls::monotonic_ns().saturating_sub(start) < PATIENCE.as_nanos() as u64;
    loop {
        let now = state.load(Acquire);
        match now {
            _ if asker(now) == Some(tid) => {
                if !patient() && state.compare_exchange(now, IDLE, AcqRel, Acquire).is_ok() {
                    return false;
                }
            }
            CLAIMED if open.load(Acquire) != 0 => {}
            WATCHED => return true,
            _ => return false,
        }
        wait_a_slice(state, now);
    }
}

/// An `exec` function called, while the gate is open and dprobe follows children, by a child of
/// the program: a forked one (whose agent follows it), or one sharing the program's memory
/// until its `exec` (`vfork`, `posix_spawn`, `system`). The child asks in a gate of its own
/// ([`Shm::child_gate`]) and waits, as the program's threads do, at most [`PATIENCE`]: dprobe
/// seizes the calling thread for its `exec` and loads an agent into the program it executes.
/// Whether dprobe watches it (if not, the program runs untraced). An `exec` that fails
/// returns, still watched: the next asks again and is told so at once.
///
/// The child gives the gate back once answered (the `exec` is then dprobe's to see); a child
/// that finds every gate taken waits for one, as long as dprobe gives gates back.
fn child_asks(pid: i32, tid: i32) -> bool {
    let shm = GATE.load(Acquire);
    if shm.is_null() || !crate::child::FOLLOW_CHILDREN.load(Relaxed) {
        return false;
    }
    // SAFETY: as in `gate_words`: the memory outlives the probes whose handler this is.
    let shm = unsafe { &*shm };
    let open = shm.exec_gate().open;
    // (The program's own thread asks in the program's gate, not here.)
    if open.load(Acquire) == 0 || pid == GATED_PID.load(Relaxed) {
        return false;
    }
    let patient = |since: u64| {
        open.load(Acquire) != 0 && raw_calls::monotonic_ns().saturating_sub(since) < PATIENCE.as_nanos() as u64
    };
    let holders =
        || std::array::from_fn::<u32, { crate::shm::CHILD_GATES }, _>(|i| shm.child_gate(i).pid.load(Acquire));
    let (mut since, mut held) = (raw_calls::monotonic_ns(), holders());
    let gate = loop {
        let free = (0..crate::shm::CHILD_GATES)
            .map(|i| shm.child_gate(i))
            .find(|gate| gate.pid.compare_exchange(0, pid as u32, AcqRel, Relaxed).is_ok());
        if let Some(gate) = free {
            break gate;
        }
        // Every gate is taken (children executing at once): one is given back as soon as
        // dprobe answers its child. The patience counts from the last gate given back: while
        // dprobe answers, the child waits its turn.
        let now_held = holders();
        if now_held != held {
            (since, held) = (raw_calls::monotonic_ns(), now_held);
        }
        if !patient(since) {
            return false;
        }
        wait_a_slice(shm.child_gate(0).pid, held[0]);
    };
    let start = raw_calls::monotonic_ns();
    gate.state.store(asking(tid), Release);
    shm.ring_tracer();
    let watched = answered_watched(gate.state, open, tid, start);
    gate.state.store(IDLE, Relaxed);
    gate.pid.store(0, Release);
    // A child waiting for a gate waits on the first one's word.
    raw_calls::futex_wake(shm.child_gate(0).pid, false);
    watched
}

/// An `exec` function called, while the gate is open, by another process than the gated one
/// (a child sharing the program's memory, or a followed fork): its program will run untraced,
/// counted for the summary once per process (`execvp` tries each directory of `PATH`; an
/// `exec` that fails altogether counts too).
fn count_a_childs_program() {
    static LAST: AtomicI32 = AtomicI32::new(0);
    let shm = GATE.load(Acquire);
    let pid = raw_calls::getpid();
    if shm.is_null() || pid == GATED_PID.load(Relaxed) || LAST.swap(pid, Relaxed) == pid {
        return;
    }
    // SAFETY: as in `gate_words`: the memory outlives the probes whose handler this is.
    unsafe { &*shm }.child_untraced();
}

/// Wait until `word` is woken or no longer `value`, at most 10 ms.
fn wait_a_slice(word: &AtomicU32, value: u32) {
    let slice = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
    raw_calls::futex_wait(word, value, &slice, false);
}
