//! Where a thread of a running process may be held to call the C library (`dlopen`), and
//! why each thread that never stopped at such a place was not used.
//!
//! A thread is interrupted until it stops outside the C library and the loader, or inside a
//! system call that waits (the C library holds no lock there), or in `futex` inside one of the
//! program's waits, such as `pthread_cond_wait` (see `lock_free_wait`); a thread stopped inside
//! `malloc` would deadlock `dlopen`. Never inside a fault's handler, nor one of the program's
//! signal handlers (`signal_frames`), which may have interrupted `malloc`, nor inside the
//! program's own allocator (`own_allocator`), which the loader's allocations then wait for.

use std::fmt;
use std::time::Duration;

use dprobe_sym::read_maps_of;

use crate::c_library::{is_c_library, is_loader, object_at};
use crate::error::TraceError;
use crate::kept;
use crate::lock_free_wait::WaitCheck;
use crate::own_allocator::AllocatorCheck;
use crate::run_to_program::{may_run_to, run_to, Ran};
use crate::signal_frames::HandlerCheck;
use crate::sys;
use crate::waiting_calls;

/// Interruptions of a running thread before another thread is tried.
pub(crate) const SAFE_POINT_TRIES: u32 = 200;

/// Where thread `tid` of process `pid`, stopped with registers `r`, is held: its id and name,
/// and the system call it waits in (or that it runs code outside the C library), for `-v`.
pub(crate) fn held_place(pid: i32, tid: i32, r: &libc::user_regs_struct) -> String {
    let place = match r.orig_rax as i64 {
        call if call < 0 => "running outside the C library and the loader".to_owned(),
        call => match waiting_calls::name(call) {
            Some(name) => format!("waiting in `{name}`"),
            None => format!("waiting in system call {call}"),
        },
    };
    format!("thread {tid} ({}), {place}", thread_name(pid, tid).unwrap_or_default())
}

/// The name of thread `tid` of process `pid` (`/proc`'s `comm`), while it is there.
fn thread_name(pid: i32, tid: i32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(name.trim_end().to_owned())
}

/// Why a thread, at its last stop, was not at a safe place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotSafe {
    /// Inside the handler of a fault signal, which blocks its own signal while it runs.
    FaultHandler,
    /// Inside one of the program's signal handlers.
    SignalHandler,
    /// Inside the program's own allocator.
    OwnAllocator,
    /// In `futex` (or a wait resumed by `restart_syscall`), not inside one of the program's
    /// own waits: it may be waiting for a lock of the C library's or the loader's.
    LockWait,
    /// In a system call that does not wait, or that it was not taken out of.
    Call(i64),
    /// Running code of the C library.
    InCLibrary,
    /// Running code of the loader.
    InLoader,
    /// It ended while it was tried.
    Ended,
    /// It did not stop when interrupted, within [`STOP_PATIENCE`] (its thread id taken over by
    /// another thread's `exec`, or asleep where the kernel does not stop it).
    NoStop,
}

/// How many times a thread is let run back to the program's code (`run_to_program`), each
/// one instead of an interruption at random: a thread that returns to it elsewhere (a handler,
/// the program's own allocator), or not within the patience given, is then interrupted.
const RUNS_TO_THE_PROGRAM: u32 = 10;

/// How long an interrupted thread is waited for.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

impl fmt::Display for NotSafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotSafe::FaultHandler => write!(f, "in a fault signal's handler"),
            NotSafe::SignalHandler => write!(f, "in a signal handler"),
            NotSafe::OwnAllocator => write!(f, "in the program's own allocator"),
            NotSafe::LockWait => write!(f, "waiting in `futex` where the C library or the loader may hold a lock"),
            NotSafe::Call(n) => match waiting_calls::name(*n) {
                Some(name) => write!(f, "in `{name}`, a call that does not wait or had returned: it may hold a lock"),
                None => write!(f, "in system call {n}, a call that does not wait or had returned: it may hold a lock"),
            },
            NotSafe::InCLibrary => write!(f, "running in the C library"),
            NotSafe::InLoader => write!(f, "running in the loader"),
            NotSafe::Ended => write!(f, "ended"),
            NotSafe::NoStop => write!(f, "did not stop within {} s of being interrupted", STOP_PATIENCE.as_secs()),
        }
    }
}

/// What deciding whether a thread stopped at a safe place reads of its process, once.
pub(crate) struct SafePlaceChecks {
    pid: i32,
    waits: WaitCheck,
    handlers: HandlerCheck,
    allocator: AllocatorCheck,
}

impl SafePlaceChecks {
    pub(crate) fn new(pid: i32) -> SafePlaceChecks {
        SafePlaceChecks {
            pid,
            waits: WaitCheck::new(pid),
            handlers: HandlerCheck::new(pid),
            allocator: AllocatorCheck::new(pid),
        }
    }

    /// Interrupt seized thread `tid` until it stops at a safe place, or give up and say why
    /// its last stop was not one: the thread is then left stopped (where a detach lets it go),
    /// or gone, or (`NotSafe::NoStop`) still running, seized, until the tracing thread ends.
    pub(crate) fn stop_at_safe_point(&mut self, tid: i32) -> Result<Result<(), NotSafe>, TraceError> {
        let mut why = NotSafe::Ended;
        let mut runs_left = RUNS_TO_THE_PROGRAM;
        for attempt in 0..SAFE_POINT_TRIES {
            sys::interrupt(tid)?;
            // Bounded: where another thread's `exec` made it the process's first thread, the
            // thread traced is gone without a word to its tracer, and the id is the new
            // program's, which dprobe does not trace.
            let deadline = std::time::Instant::now() + STOP_PATIENCE;
            loop {
                let Some((_, status)) = sys::wait_until(tid, deadline)? else {
                    return Ok(Err(NotSafe::NoStop));
                };
                if !libc::WIFSTOPPED(status) {
                    return Ok(Err(NotSafe::Ended));
                }
                if sys::event_of(status) != 0 {
                    break;
                }
                // The program's signal, arrived first: deliver it and wait for the interrupt.
                sys::cont(tid, libc::WSTOPSIG(status))?;
            }
            let mut r = sys::get_regs(tid)?;
            crate::interrupted_wait::wait_on(tid, &mut r)?;
            let mut verdict = self.why_not_safe(tid, &r)?;
            if runs_left > 0 && self.may_run_on(tid, &r, verdict)? {
                if let Some(at) = self.waits.return_into_program(&r) {
                    runs_left -= 1;
                    match run_to(self.pid, tid, at)? {
                        Ran::Stopped => {}
                        Ran::Ended => return Ok(Err(NotSafe::Ended)),
                        Ran::NoStop => return Ok(Err(NotSafe::NoStop)),
                    }
                    r = sys::get_regs(tid)?;
                    crate::interrupted_wait::wait_on(tid, &mut r)?;
                    verdict = self.why_not_safe(tid, &r)?;
                }
            }
            match verdict {
                None => return Ok(Ok(())),
                Some(reason) => why = reason,
            }
            if attempt + 1 == SAFE_POINT_TRIES {
                // The reason given is the last stop's. A thread inside a signal handler is
                // refused whatever it does there, but one that sleeps in a loop in its handler
                // may have stopped between two sleeps: the handler is what no try can get past,
                // and what the refusal says.
                if matches!(why, NotSafe::Call(_) | NotSafe::LockWait | NotSafe::InCLibrary | NotSafe::InLoader)
                    && self.handlers.in_a_handler(r.rsp) == Some(true)
                {
                    why = NotSafe::SignalHandler;
                }
                // Stopped still: the caller's detach lets it go (a running thread cannot be
                // detached, and would stay traced, stopping at its next signal with no one to
                // resume it).
                break;
            }
            sys::cont(tid, 0)?;
            std::thread::sleep(Duration::from_micros(50 + u64::from(attempt % 20) * 47));
        }
        Ok(Err(why))
    }

    /// Whether thread `tid`, stopped with registers `r` where it is not safe for `verdict`,
    /// may be let run back to the program's code (`run_to_program`): it runs in the C
    /// library, or has just come back from a system call that does not wait (not one that
    /// waits, which may hold a lock until it returns, long after).
    fn may_run_on(&self, tid: i32, r: &libc::user_regs_struct, verdict: Option<NotSafe>) -> Result<bool, TraceError> {
        let running = match verdict {
            Some(NotSafe::InCLibrary) => true,
            Some(NotSafe::Call(_)) => !crate::let_go::interrupted_call(r),
            _ => false,
        };
        Ok(running && may_run_to(self.pid, tid)?)
    }

    /// Why thread `tid`, stopped with registers `r`, is not at a safe place (`None` where it is).
    fn why_not_safe(&mut self, tid: i32, r: &libc::user_regs_struct) -> Result<Option<NotSafe>, TraceError> {
        // Inside a handler of a fault (which blocks its own signal while it runs): not a place
        // to call `dlopen` from (it may have interrupted `malloc`). A thread that blocks nearly
        // every signal (one waiting in `sigwait`) blocks the faults too, and is not in such a
        // handler.
        let mask = sys::sigmask(tid)?;
        if mask & kept::FAULTS != 0 && (mask & kept::STANDARD).count_ones() <= kept::MOST_BLOCKED {
            return Ok(Some(NotSafe::FaultHandler));
        }
        if let Some(reason) = self.outside_a_wait(r)? {
            return Ok(Some(reason));
        }
        if self.handlers.running_a_handler(r.rsp) {
            return Ok(Some(NotSafe::SignalHandler));
        }
        if self.allocator.inside(r) {
            return Ok(Some(NotSafe::OwnAllocator));
        }
        Ok(None)
    }

    /// Why a thread stopped with registers `r` may hold a lock of the C library's or the
    /// loader's (`None` where it holds none).
    fn outside_a_wait(&mut self, r: &libc::user_regs_struct) -> Result<Option<NotSafe>, TraceError> {
        let call = r.orig_rax as i64;
        if call >= 0 {
            // Waiting, and to be restarted (or interrupted) when resumed; or a wait the
            // interrupt ended with `EINTR` (`epoll_wait` with a timeout, a socket's with
            // `SO_RCVTIMEO`: see `interrupted_wait`), which returns early once, as after a
            // signal: its thread holds no lock there either.
            let ended = r.rax as i64 == sys::EINTR;
            if !crate::let_go::interrupted_call(r) && !ended {
                return Ok(Some(NotSafe::Call(call)));
            }
            let waiting = match call {
                libc::SYS_futex => self.waits.holds_no_library_lock(r, false),
                libc::SYS_restart_syscall => self.waits.holds_no_library_lock(r, true),
                _ if waiting_calls::holds_no_lock(call) => return Ok(None),
                _ => return Ok(Some(NotSafe::Call(call))),
            };
            return Ok((!waiting).then_some(NotSafe::LockWait));
        }
        let maps = read_maps_of(self.pid as u32)?;
        Ok(match object_at(&maps, r.rip) {
            Some(path) if is_c_library(path) => Some(NotSafe::InCLibrary),
            Some(path) if is_loader(path) => Some(NotSafe::InLoader),
            _ => None,
        })
    }
}

/// The reason an attach gives where no thread of process `pid` stopped at a safe place:
/// the threads tried, grouped by why each was not at one at its last stop.
pub(crate) fn refusal(pid: i32, tried: &[(i32, NotSafe)]) -> String {
    const SHOWN: usize = 3;
    let mut groups: Vec<(NotSafe, Vec<i32>)> = Vec::new();
    for &(tid, why) in tried {
        match groups.iter_mut().find(|(reason, _)| *reason == why) {
            Some((_, tids)) => tids.push(tid),
            None => groups.push((why, vec![tid])),
        }
    }
    let named = |tid: i32| match thread_name(pid, tid) {
        Some(name) => format!("{tid} ({name})"),
        None => tid.to_string(),
    };
    let described: Vec<String> = groups
        .iter()
        .map(|(why, tids)| {
            let mut names: Vec<String> = tids.iter().take(SHOWN).map(|&t| named(t)).collect();
            if tids.len() > SHOWN {
                names.push(format!("{} more", tids.len() - SHOWN));
            }
            let noun = if tids.len() == 1 { "thread" } else { "threads" };
            format!("{noun} {}: {why}", names.join(", "))
        })
        .collect();
    format!(
        "no thread stopped at a safe place to call `dlopen` from (outside the C library and the loader, or \
         waiting where it holds none of their locks, and not in a signal handler or the program's own \
         allocator; each thread was interrupted up to {SAFE_POINT_TRIES} times). At the last stop: {}",
        described.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_groups_the_threads_by_reason_and_names_a_few() {
        let pid = std::process::id() as i32;
        let tried = [
            (pid, NotSafe::SignalHandler),
            (-2, NotSafe::LockWait),
            (-3, NotSafe::LockWait),
            (-4, NotSafe::LockWait),
            (-5, NotSafe::LockWait),
            (-6, NotSafe::Call(libc::SYS_sched_yield)),
        ];
        let text = refusal(pid, &tried);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let expected = format!(
            "At the last stop: thread {pid} ({}): in a signal handler; threads -2, -3, -4, 1 more: waiting in \
             `futex` where the C library or the loader may hold a lock; thread -6: in system call 24, a call \
             that does not wait or had returned: it may hold a lock",
            comm.trim_end()
        );
        assert!(text.ends_with(&expected), "{text}");
    }
}
