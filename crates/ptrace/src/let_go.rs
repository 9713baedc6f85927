//! Letting a running process go after loading a library into it, without waking the thread
//! that was held.
//!
//! The held thread is usually one that waited in a system call (`pause`, `poll`, `read`...):
//! the tracer's interrupt took it out of the call, which the kernel restarts when the thread
//! resumes. `PTRACE_DETACH` always marks the thread as having a signal to look at, so a thread
//! detached even inside its restarted call leaves it again at once and restarts it once more
//! on its way back to user mode. A signal of the program's that arrives in that moment (after
//! the restart was decided, before the call is entered again) runs its handler first, and the
//! call is then entered as if the signal had never come: `while (!done) pause();` waits on
//! with `done` set. Untraced, the program never has that moment: the signal ends its `pause`.
//!
//! So the process is not detached. The thread is brought back into its call while still
//! traced (a signal that comes meanwhile is held, then queued again: it is pending when the
//! call is entered, and ends it as it would have), resumed with `PTRACE_CONT` (which marks
//! nothing), and the tracer thread then ends: the kernel unlinks a tracer's tracees when it
//! exits, waking only those stopped for it. The whole load therefore runs on a thread of
//! dprobe's made for it alone ([`Injector::attached`]). The end of a trace lets threads go
//! the same way ([`let_thread_go`]) when its tracer is a thread about to end: dprobe's own,
//! as it exits.

use std::time::{Duration, Instant};

use crate::error::TraceError;
use crate::library::{Injector, LoadError};
use crate::sys;

/// How long the end of the tracer thread may take to reach the kernel's unlinking: a bound
/// against waiting forever on a kernel that behaves otherwise, not a measure.
const UNLINK_LIMIT: Duration = Duration::from_secs(10);

/// Whether registers `r` of a thread stopped by the tracer say it was taken out of a system
/// call that the kernel restarts when it resumes (`-ERESTARTSYS`, `-ERESTARTNOINTR`,
/// `-ERESTARTNOHAND`, `-ERESTART_RESTARTBLOCK`).
pub(crate) fn interrupted_call(r: &libc::user_regs_struct) -> bool {
    r.orig_rax as i64 >= 0 && matches!(r.rax as i64, -516..=-512)
}

/// Resume stopped thread `tid` of process `pid`, whose registers are `saved` (as the program
/// left them), without detaching it: brought back into the system call it was taken out of
/// first, when it was in one. The signals `held` for it, and those that come before it is
/// inside, are queued again.
pub(crate) fn resume_into_its_call(
    pid: i32,
    tid: i32,
    saved: &libc::user_regs_struct,
    mut held: Vec<libc::siginfo_t>,
) -> Result<(), TraceError> {
    let entered = match interrupted_call(saved) {
        true => enter_call(tid, &mut held),
        false => Ok(()),
    };
    if let Err(e @ TraceError::Gone { .. }) = entered {
        return Err(e);
    }
    for info in &held {
        crate::continued::queue_again(pid, tid, info)?;
    }
    entered?;
    sys::cont(tid, 0)?;
    Ok(())
}

/// Let stopped thread `tid` of process `pid` go at the end of a trace, with `signal` (0 for
/// none), without a moment where a signal of the program's could be handled and the call it
/// ends go on waiting. A thread that was taken out of a system call it must go back into, and
/// that no signal ends now, is brought back into it still traced, its ptrace options cleared
/// (no event stops it any more: no `PTRACE_O_EXITKILL` either), and continued: the tracing of
/// it ends with the calling thread, which must be about to end (see the module's text; until
/// then a signal stops it, and is delivered when the tracing ends, or by [`pass_on`]). Any
/// other thread is detached: one with a signal to receive gets it in the same pass through
/// the kernel that decides about its call (it then ends, as it would untraced); one outside a
/// call has nothing to go back into; one in a group-stop stays stopped until continued.
pub(crate) fn let_thread_go(pid: i32, tid: i32, signal: i32, group_stop: bool) -> Result<(), TraceError> {
    if signal == 0 && !group_stop {
        let saved = sys::get_regs(tid)?;
        if interrupted_call(&saved) {
            sys::set_options(tid, 0)?;
            return resume_into_its_call(pid, tid, &saved, Vec::new());
        }
    }
    Ok(sys::detach(tid, signal)?)
}

/// Pass on a stop that wait status `status` of thread `tid` reports, of a thread let go by
/// [`let_thread_go`] whose tracing has not ended yet: its signal is delivered, a group-stop
/// stays stopped. What it returns says whether the thread is still there.
pub(crate) fn pass_on(tid: i32, status: i32) -> bool {
    if !libc::WIFSTOPPED(status) {
        return false;
    }
    let signal = libc::WSTOPSIG(status);
    let passed = match sys::event_of(status) {
        0 => sys::cont(tid, signal),
        crate::tracee::EVENT_STOP if crate::thread::is_stop_signal(signal) => {
            sys::listen(tid).or_else(|_| sys::cont(tid, 0))
        }
        _ => sys::cont(tid, 0),
    };
    passed.is_ok()
}

/// Run stopped thread `tid` to the entry of its next system call (the restarted one). The
/// program's signals stay pending on the way (see `kept`), for the call to be ended by them
/// as it would have been; those that cannot (`SIGSTOP`, a `SIGTRAP` of the program's) are
/// added to `held`.
fn enter_call(tid: i32, held: &mut Vec<libc::siginfo_t>) -> Result<(), TraceError> {
    crate::inject::to_syscall_stops_keeping(tid, 1, held)
}

/// The thread tracing thread `tid` of process `pid` (0 for none; `None` when it is gone).
fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("TracerPid:"))?.trim().parse().ok()
}

impl Injector {
    /// Seize one thread of running process `pid`, hold it at a safe point, run `f` with it,
    /// and let the process go with that thread as it was: on a thread of dprobe's made for
    /// this, which ends before this returns, and with it the tracing (see the module's text).
    /// The process runs untraced when this returns, whatever `f` returned.
    pub fn attached<T: Send>(
        pid: i32,
        f: impl FnOnce(&mut Injector) -> Result<T, LoadError> + Send,
    ) -> Result<T, LoadError> {
        let run = move || -> (Result<T, LoadError>, Option<(i32, i32)>) {
            let mut held = match Injector::attach(pid) {
                Ok(held) => held,
                Err(e) => return (Err(e), None),
            };
            let tracer = nix::unistd::gettid().as_raw();
            let tid = held.tid();
            let result = f(&mut held);
            let resumed = held.resume_as_it_was();
            let result = match (result, resumed) {
                (Ok(value), Ok(())) => Ok(value),
                (Ok(_), Err(e)) | (Err(e), _) => Err(e),
            };
            (result, Some((tid, tracer)))
        };
        let (result, traced) = std::thread::scope(|s| {
            let loader = std::thread::Builder::new().name("dprobe-attach".into()).spawn_scoped(s, run);
            match loader {
                Ok(loader) => loader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => {
                    (Err(LoadError::Refused { pid, reason: format!("starting a thread to load with: {e}") }), None)
                }
            }
        });
        if let Some((tid, tracer)) = traced {
            // The thread has returned; its exit, which unlinks the process, follows at once.
            let limit = Instant::now() + UNLINK_LIMIT;
            while tracer_of(pid, tid) == Some(tracer) && Instant::now() < limit {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        result
    }
}
