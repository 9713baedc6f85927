//! dprobe asked before the program's `exec`, so that it need not watch the program all along.
//!
//! A program dprobe starts is followed into each program it executes (`exec`): the new one is
//! held where the agent can be loaded into it again. dprobe sees the `exec` as ptrace's
//! `PTRACE_EVENT_EXEC`, which needs the program's main thread traced, and a traced thread
//! stops at every signal it receives, its `int3` hits among them (a `SIGTRAP` each): a hit
//! there cost a stop of dprobe's, about 35 µs, against 2 µs untraced.
//!
//! So the agent asks first: probes on the C library's `execve` and `execveat` (which `execv`,
//! `execvp`, `execl` and the others call) make the main thread that calls one say so in the
//! shared memory and wait until dprobe answers, at most [`PATIENCE`]. dprobe seizes the
//! thread with ptrace for its `exec` alone, then answers; the `exec` runs traced and is held
//! as before. A thread other than the main one, a child sharing the program's memory (a
//! `vfork` or `posix_spawn` child, whose `exec` is its own), and calls while dprobe does not
//! wait for them go on at once. An `exec` made with the system call itself (`fexecve`, or not
//! through the C library) is not seen before it happens: dprobe says the new program is not
//! traced. An `exec` that fails (a file not found) leaves the program watched until its next
//! `exec` or the end of the trace, as all along before.
//!
//! The probes must be jump-optimized: a `posix_spawn` child resets the handlers of its signals,
//! dprobe's `SIGTRAP` handler among them, before it calls `execve`, and an `int3` there would
//! kill it. Where they cannot be, the agent does not ask, and dprobe watches the program all
//! along.
//!
//! The words (`Shm::exec_gate`): `open`, set while the agent asks, and `state`, a futex word:
//! [`IDLE`]; [`ASKING`] (the main thread waits); [`CLAIMED`] (dprobe took the request: the
//! thread waits on, whatever its patience, until dprobe is done); [`WATCHED`] (dprobe watches
//! the program: the thread goes on, and so do its later calls). The asking thread gives up by
//! moving `ASKING` back to `IDLE`, and dprobe claims a request by moving `ASKING` to `CLAIMED`,
//! so that dprobe never seizes a program whose thread went on without it. Closing clears
//! `open` and wakes the waiting thread before the probes are removed (removal waits for the
//! handlers that run).

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dprobe_inproc::{register, Kprobe, PreAction, Probe, Regs};

use crate::shm::Shm;

/// How long a thread waits for dprobe to take its request before its `exec` goes on
/// unwatched.
pub(crate) const PATIENCE: Duration = Duration::from_secs(2);

/// `state`: nothing asked.
pub(crate) const IDLE: u32 = 0;
/// `state`: the main thread asks and waits.
pub(crate) const ASKING: u32 = 1;
/// `state`: dprobe took the request and is seizing the thread.
pub(crate) const CLAIMED: u32 = 2;
/// `state`: dprobe watches the program for its `exec`.
pub(crate) const WATCHED: u32 = 3;

/// The shared memory whose words the probes' handler uses, while the gate is open.
static GATE: AtomicPtr<Shm> = AtomicPtr::new(std::ptr::null_mut());
/// The process whose main thread asks (not a child sharing its memory).
static GATED_PID: AtomicI32 = AtomicI32::new(0);

/// Place the probes that ask dprobe before an `exec` (`shm`'s words then say so): the
/// probes, or why they could not be placed as jumps.
pub(crate) fn open(shm: &Arc<Shm>) -> Result<Vec<Probe>, String> {
    // (Until `GATE` is set, the probes' handler lets every call go on.)
    let execve = register(Kprobe::symbol("libc:execve").pre(asks)).map_err(|e| e.to_string())?;
    let mut probes = vec![execve];
    // Not in C libraries before 2.34.
    if let Ok(execveat) = register(Kprobe::symbol("libc:execveat").pre(asks)) {
        probes.push(execveat);
    }
    if let Some(why) = probes.iter().find_map(|p| p.optimized().err()) {
        return Err(format!("the C library's execve is not jump-optimized: {why}"));
    }
    GATED_PID.store(std::process::id() as i32, Relaxed);
    GATE.store(Arc::as_ptr(shm).cast_mut(), Release);
    shm.exec_gate().open.store(1, Release);
    Ok(probes)
}

/// Stop asking: the waiting thread goes on, then the probes are removed. In a forked child
/// (whose copy of the probes goes as it starts) the shared words are the parent's, left as
/// they are.
pub(crate) fn close(shm: &Shm, probes: Vec<Probe>) {
    if std::process::id() as i32 == GATED_PID.load(Relaxed) {
        let words = shm.exec_gate();
        words.open.store(0, Release);
        wake(words.state);
    }
    drop(probes);
    GATE.store(std::ptr::null_mut(), Release);
}

/// Wake every thread waiting on `word` (a futex word of the shared memory).
pub(crate) fn wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned word; shared (not private): dprobe wakes it from
    // another process.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0usize) };
}

/// `execve`'s (or `execveat`'s) first instruction: the program's main thread asks dprobe and
/// waits for its answer (see the module's comment).
fn asks(_: &mut Regs) -> PreAction {
    let shm = GATE.load(Acquire);
    // SAFETY: getpid and gettid have no arguments and no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if shm.is_null() || pid != GATED_PID.load(Relaxed) || tid != pid {
        return PreAction::Continue;
    }
    // SAFETY: `GATE` points at the session's shared memory from `open` until `close`, which
    // removes this probe (waiting for its running handlers) before the memory is dropped.
    let words = unsafe { &*shm }.exec_gate();
    if words.open.load(Acquire) == 0 || words.state.compare_exchange(IDLE, ASKING, AcqRel, Acquire).is_err() {
        // Not asking, or watched already (an earlier `exec` failed).
        return PreAction::Continue;
    }
    let start = Instant::now();
    loop {
        let state = words.state.load(Acquire);
        let gave_up = || words.state.compare_exchange(ASKING, IDLE, AcqRel, Acquire).is_ok();
        match state {
            ASKING if words.open.load(Acquire) == 0 || start.elapsed() >= PATIENCE => {
                if gave_up() {
                    return PreAction::Continue;
                }
            }
            ASKING => {}
            CLAIMED if words.open.load(Acquire) == 0 => return PreAction::Continue,
            CLAIMED => {}
            _ => return PreAction::Continue,
        }
        let slice = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        // SAFETY: FUTEX_WAIT on a valid, aligned word with a valid timeout: returns when woken,
        // when the word is no longer `state`, at a signal, or after 10 ms.
        unsafe { libc::syscall(libc::SYS_futex, words.state.as_ptr(), libc::FUTEX_WAIT, state, &slice as *const _) };
    }
}
