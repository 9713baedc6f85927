//! Bringing every thread of the traced process to a stop the tracer holds: at attach (every
//! thread seized, then interrupted) and at detach.
//!
//! A seized thread's interrupt (`PTRACE_INTERRUPT`) is consumed by whatever stop the thread
//! reports next (the kernel clears a pending interrupt at any ptrace stop): a signal, a
//! clone, a fork, its exit. A signal-delivery stop is kept as the thread's stop, with its
//! signal, delivered when the thread leaves it. A clone, fork or exec stop is inside a system
//! call that has yet to return: the thread is let finish it and interrupted again. A thread
//! on its way out is let go. A started program's threads are seized too (`sys::fork_seized`):
//! dprobe never stops a thread with a `SIGSTOP`, so that the program's own `SIGSTOP` (or
//! `SIGTSTP`) is never taken for dprobe's (the only one dprobe sends puts a thread that it
//! made run back into the group-stop it was held in, `thread::resume`).
//!
//! A `vfork` child traced with the program (see `family`) is let go as soon as it stops: its
//! parent waits for it in `vfork` and cannot stop while it is held.
//!
//! A thread that executed one of dprobe's `int3`s may report the interrupt before the
//! `SIGTRAP` (still pending then): it is let go on to report the trap, so that the trap is
//! recognised as dprobe's and consumed, never left to the program.
//!
//! Each thread's stops are read for it alone (`waitpid` on its id, not on any child): the
//! processes followed from the program are let go one at a time, and while one is stopped
//! the others go on, their stops (a hit, a new child, an exit) waiting for their own turn. A
//! stop read for the wrong process would be lost to its own: left in its ptrace stop, never
//! resumed or detached, with dprobe waiting for it.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use dprobe_arch::Addr;

use crate::blocked::blocked;
use crate::error::TraceError;
use crate::sys;
use crate::thread::{is_stop_signal, Stop, Thread};
use crate::tracee::{Tracee, EVENT_STOP};

/// How long every thread that has not stopped may be one that cannot (see `blocked`) before
/// stopping is given up: a `vfork` child executes its program within milliseconds.
pub(crate) const BLOCKED_BOUND: Duration = Duration::from_secs(3);
/// How long threads that run the program's code are still waited for once stopping is given
/// up.
const GIVE_UP_GRACE: Duration = Duration::from_secs(1);
/// Idle time before `/proc` is asked why the threads have not stopped.
const LOOK_AFTER: Duration = Duration::from_millis(50);

/// Waiting with nothing to report: a short sleep that grows (stops usually come within
/// microseconds), and since when every thread still waited for cannot stop.
struct Idle {
    since: Instant,
    sleep: Duration,
    blocked_since: Option<Instant>,
}

impl Default for Idle {
    fn default() -> Idle {
        Idle { since: Instant::now(), sleep: Duration::from_micros(20), blocked_since: None }
    }
}

impl Idle {
    /// Sleep a little; `Some(why)` when every one of the `(process, thread)` pairs still
    /// waited for has been unable to stop for [`BLOCKED_BOUND`].
    fn blocked_too_long(&mut self, waiting: &[(i32, i32)]) -> Option<String> {
        std::thread::sleep(self.sleep);
        self.sleep = (self.sleep * 2).min(Duration::from_millis(5));
        if self.since.elapsed() < LOOK_AFTER {
            return None;
        }
        let reasons: Vec<String> = waiting.iter().filter_map(|&(p, t)| blocked(p, t)).map(|b| b.reason).collect();
        if reasons.len() < waiting.len() {
            self.blocked_since = None;
            return None;
        }
        let since = *self.blocked_since.get_or_insert_with(Instant::now);
        (since.elapsed() >= BLOCKED_BOUND)
            .then(|| format!("{} (waited {} s)", reasons.join("; "), BLOCKED_BOUND.as_secs()))
    }
}

impl Tracee {
    /// Stop every thread that is not held yet; new threads are stopped too, exited ones
    /// forgotten. The wait is given up when `give_up` says so (asked whenever no thread has
    /// anything to report, and now and then while they keep reporting; threads asleep in the
    /// kernel are given up on at once, the others after a moment), or when every thread
    /// still waited for has been unable to stop for a while ([`TraceError::Blocked`], which
    /// names them and says why).
    pub(crate) fn stop_all(&mut self, give_up: &dyn Fn() -> bool) -> Result<(), TraceError> {
        self.held_stops.new_hold();
        let mut waiting: BTreeSet<i32> =
            self.threads.iter().filter(|(_, t)| !t.is_stopped()).map(|(tid, _)| *tid).collect();
        for tid in waiting.clone() {
            if let Err(e) = sys::interrupt(tid) {
                if !e.gone() {
                    return Err(e.into());
                }
                // Gone: its exit is still to be reported.
            }
        }
        let mut idle = Idle::default();
        let mut giving_up: Option<Instant> = None;
        let mut reported = VecDeque::new();
        let mut rounds = 0u32;
        // Every status read is dealt with, a thread's that is no longer waited for too.
        while !waiting.is_empty() || !reported.is_empty() {
            if reported.is_empty() {
                self.read_reports(&mut waiting, &mut reported)?;
                rounds += 1;
            }
            // Asked whenever nothing comes, and now and then while reports keep coming:
            // threads that keep reporting (a program creating threads or processes as fast
            // as it can) must not keep a second signal waiting.
            if reported.is_empty() || rounds % 16 == 0 {
                if giving_up.is_none() && give_up() {
                    // A thread that runs the program's code is still waited for a moment
                    // (asked again, should its interrupt have been lost): left running, it
                    // could meet dprobe's code with no tracer. One asleep in the kernel runs
                    // none, and is given up on at once.
                    giving_up = Some(Instant::now());
                    for &t in &waiting {
                        let _ = sys::interrupt(t);
                    }
                }
                if let Some(since) = giving_up {
                    let all_asleep = waiting.iter().all(|&t| blocked(self.process_of(t), t).is_some());
                    if all_asleep || since.elapsed() >= GIVE_UP_GRACE {
                        return Err(TraceError::GaveUp { waiting: waiting.len() });
                    }
                }
            }
            let Some((tid, status)) = reported.pop_front() else {
                let tasks: Vec<(i32, i32)> = waiting.iter().map(|t| (self.process_of(*t), *t)).collect();
                if let Some(reason) = idle.blocked_too_long(&tasks) {
                    return Err(TraceError::Blocked { waiting: waiting.len(), reason });
                }
                continue;
            };
            idle = Idle::default();
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                waiting.remove(&tid);
                self.thread_exited(tid, status);
                continue;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            if self.guests.contains(&tid) && sys::event_of(status) == libc::PTRACE_EVENT_EXEC {
                // A vfork child's new program: nothing of dprobe's in it.
                waiting.remove(&tid);
                match self.guest_executed(tid, false) {
                    Err(TraceError::Gone { .. }) => self.forget_guest(tid),
                    other => other?,
                }
                continue;
            }
            if self.early_child(tid, status) {
                continue;
            }
            if sys::event_of(status) == libc::PTRACE_EVENT_EXEC {
                // The program executed another: nothing of dprobe's is left to restore, and
                // the other threads are gone.
                self.executed_as_renamed(tid);
                self.image_replaced(tid)?;
                self.trap_action_after_exec();
                waiting.retain(|t| *t == tid);
            }
            if let std::collections::btree_map::Entry::Vacant(new) = self.threads.entry(tid) {
                // A thread created meanwhile, reporting its first stop: stopped too.
                new.insert(Thread::running());
                waiting.insert(tid);
            }
            let outcome = self.seized_stop(tid, status);
            match outcome {
                Ok(Some(stop)) if self.guests.contains(&tid) => {
                    waiting.remove(&tid);
                    self.let_guest_go(tid, stop)?;
                }
                Ok(Some(stop)) => {
                    waiting.remove(&tid);
                    self.threads.insert(tid, Thread::stopped(stop));
                }
                Ok(None) if !self.threads.contains_key(&tid) => {
                    waiting.remove(&tid);
                }
                Ok(None) => {}
                // Killed meanwhile: its exit comes next.
                Err(TraceError::Gone { .. }) => {}
                Err(e) => return Err(e),
            }
            // Threads created by a clone just seen are waited for as well.
            waiting.extend(self.threads.iter().filter(|(_, t)| !t.is_stopped()).map(|(tid, _)| *tid));
        }
        Ok(())
    }

    /// One status from each thread still waited for that has one (and from the main thread,
    /// which another thread's `execve` turns into), read for each thread alone: another
    /// traced process's stops (a followed child, the program, while the other is being let
    /// go) stay with the kernel for that process's own wait, never taken here for one of this
    /// process's. A thread that is no longer the tracer's (reaped, or gone with an `execve`
    /// of another thread) is forgotten.
    fn read_reports(
        &mut self,
        waiting: &mut BTreeSet<i32>,
        reported: &mut VecDeque<(i32, i32)>,
    ) -> Result<(), TraceError> {
        let main = (!waiting.contains(&self.pid) && self.threads.contains_key(&self.pid)).then_some(self.pid);
        for tid in waiting.iter().copied().chain(main).collect::<Vec<_>>() {
            match sys::try_wait(tid) {
                Ok(Some(got)) => reported.push_back(got),
                Ok(None) => {}
                Err(e) if e.errno == libc::ECHILD => {
                    waiting.remove(&tid);
                    self.guests.remove(&tid);
                    self.threads.remove(&tid);
                    self.forget_thread_returns(tid);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A seized thread's stop while stopping every thread: `Some` with the kind of stop it
    /// is held in, `None` when it was let go on to report another.
    fn seized_stop(&mut self, tid: i32, status: i32) -> Result<Option<Stop>, TraceError> {
        let signal = libc::WSTOPSIG(status);
        match sys::event_of(status) {
            EVENT_STOP if is_stop_signal(signal) => {
                self.held_stops.taken(tid, signal, true);
                Ok(Some(Stop::Group))
            }
            EVENT_STOP => {
                if self.trap_pending(tid)? {
                    sys::cont(tid, 0)?;
                    return Ok(None);
                }
                // Where the interrupt ended a wait that would have gone on untraced, it does.
                crate::interrupted_wait::wait_on(tid, &mut sys::get_regs(tid)?)?;
                Ok(Some(Stop::Event))
            }
            libc::PTRACE_EVENT_EXIT => self.let_exiting_go(tid).map(|()| None),
            0 if signal == libc::SIGTRAP && self.take_our_trap(tid)? => Ok(Some(Stop::Signal(0))),
            0 => {
                self.held_stops.taken(tid, signal, false);
                if self.trap_pending(tid)? {
                    // Our trap comes next (see above): deliver this one first.
                    let signal = self.deliverable(tid, signal)?;
                    sys::cont(tid, signal)?;
                    return Ok(None);
                }
                Ok(Some(Stop::Signal(signal)))
            }
            event => {
                // A clone, fork or exec stop is inside the system call, which still has to
                // return (its result overwrites `rax`): no place to hold a thread the tracer
                // may make run a system call. It finishes it, and is interrupted again.
                self.on_new_task(tid, event)?;
                sys::cont(tid, 0)?;
                sys::interrupt(tid)?;
                Ok(None)
            }
        }
    }

    /// A thread stopped on its way out (`PTRACE_EVENT_EXIT`) is let go at once: it runs no
    /// more of the program's code, and the exit of a main thread is not reported while other
    /// threads live, so waiting for it could wait for ever.
    fn let_exiting_go(&mut self, tid: i32) -> Result<(), TraceError> {
        self.threads.remove(&tid);
        self.forget_thread_returns(tid);
        self.forget_trap_mask(tid);
        match sys::detach(tid, 0) {
            Err(e) if !e.gone() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A clone or fork seen while stopping every thread: a new thread is to be stopped as
    /// well (its first stop comes: it is not interrupted or signalled), a new process is let
    /// go (see `family`: no probe is in the code while every thread is being stopped).
    pub(crate) fn on_new_task(&mut self, tid: i32, event: i32) -> Result<(), TraceError> {
        match event {
            libc::PTRACE_EVENT_CLONE => {
                let new = sys::event_message(tid)? as i32;
                if sys::exists(self.pid, new) {
                    self.threads.entry(new).or_insert(Thread::running());
                } else if crate::family::is_early(new) || sys::exists(new, new) {
                    self.on_child(tid, new, event, false)?;
                }
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let child = sys::event_message(tid)? as i32;
                self.on_child(tid, child, event, false)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Where thread `tid` would be after executing one of dprobe's `int3`s: just past a probe
    /// site or the return trampoline.
    fn past_our_int3(&self, rip: u64) -> Option<Addr> {
        let at = Addr(rip.wrapping_sub(1));
        (self.sites.contains_key(&at) || Some(at) == self.xol.trampoline_addr()).then_some(at)
    }

    /// Whether thread `tid` executed one of dprobe's `int3`s and its `SIGTRAP` is still to be
    /// reported.
    pub(crate) fn trap_pending(&self, tid: i32) -> Result<bool, TraceError> {
        let r = sys::get_regs(tid)?;
        Ok(self.past_our_int3(r.rip).is_some() && sys::is_pending(self.pid, tid, libc::SIGTRAP))
    }

    /// A `SIGTRAP` stop while every thread is being stopped: when it is one of dprobe's
    /// `int3`s, it is consumed: at a probe (whose original byte is back) the thread goes back
    /// onto the original instruction, at the return trampoline on to the real return address
    /// (the return is counted, its handlers are not run). `false`: the program's own trap.
    pub(crate) fn take_our_trap(&mut self, tid: i32) -> Result<bool, TraceError> {
        let mut r = sys::get_regs(tid)?;
        let resumed_at = self.resumed_at.get(&tid).copied();
        let Some(at) = self.past_our_int3(r.rip) else { return Ok(false) };
        let own = self.trap_taken(tid)?;
        // The program's own, sent as dprobe resumed the thread just past a site (see
        // `Tracee::on_trap`): delivered as the program's.
        if own.is_some() && resumed_at.is_some_and(|at| sys::same_registers(&at, &r)) {
            return Ok(false);
        }
        // Held, then resumed after other stops of dprobe's: the program's own signal that came
        // in place of the trap is queued again (back on its instruction, it is never taken
        // for a trap of dprobe's again).
        if let Some(own) = own {
            self.queue_own_trap_again(tid, &own);
        }
        if Some(at) == self.xol.trampoline_addr() {
            self.on_return_trap(tid, &mut r, false)?;
        } else {
            r.rip = at.0;
        }
        sys::set_regs(tid, &r)?;
        Ok(true)
    }
}
