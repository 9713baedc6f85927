//! A started program that the tracer let go (its library loaded) but still watches for one
//! thing: its `exec`. The new program is held where a library can be loaded again (see
//! `early`), so that what was loaded into the old one can be loaded into it too.
//!
//! It is watched from when the tracer lets it go, or from when it says it is about to `exec`
//! ([`ExecWatch::seize_thread`]). One thread is traced, with `PTRACE_O_TRACEEXEC` alone (no
//! fork or thread stops it): the main thread, or the one about to `exec` (the kernel reports
//! an `exec` to the tracer of the thread that makes it, which then takes the process's id).
//! A watched thread other than the main one that ends alone ends the watch
//! ([`Watched::ThreadEnded`]).
//!
//! A signal to that thread stops it (ptrace reports every signal, a `SIGTRAP` of an `int3`
//! probe's hit among them): it is delivered at once, a stop signal leaves the program
//! stopped (`PTRACE_LISTEN`) as it would untraced. Should the
//! tracer die, the kernel lets the program go (no `PTRACE_O_EXITKILL` while it runs on its
//! own). A thread of dprobe's waits for the program's stops meanwhile (see `stop_waiter`), so
//! that the tracer can take each at once: a signal is held in its stop only that long.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::library::{Injector, LoadError};
use crate::stop_waiter::StopWaiter;
use crate::sys;
use crate::thread::is_stop_signal;
use crate::tracee::EVENT_STOP;

/// A started program running on its own, watched for its `exec`.
pub struct ExecWatch {
    pid: i32,
    /// The traced thread (after its `exec`, `pid`).
    tid: i32,
    watching: bool,
    /// What a look taken only to deliver signals found, kept for the next [`ExecWatch::poll`].
    found: Option<Watched>,
    /// Says when the program stopped or ended, while it is watched.
    waiter: Option<StopWaiter>,
    /// The program ignores `SIGTRAP`, though the kernel's action is a handler of dprobe's
    /// agent, which its `exec` does not keep (see [`ExecWatch::trap_ignored`]).
    trap_ignored: bool,
}

/// How long ending the waiting thread may take, at most (it ends at once where the program
/// has something waitable).
const WAITER_END: Duration = Duration::from_secs(1);

/// What a look at a watched program found.
pub enum Watched {
    /// Nothing to act on: it runs.
    Running,
    /// It executed a new program, held where a library can be loaded (before any constructor
    /// but the C library's).
    Executed(Box<Injector>),
    /// It executed a new program that cannot be held there, for this reason: it runs on,
    /// no longer watched.
    Unheld(String),
    /// It ended, with this wait status. It is left for its parent to reap (`waitpid`), which
    /// does so once done with what `/proc` still shows of it (the race of an end between
    /// the watch's look and its wait is reaped already).
    Ended(i32),
    /// The watched thread, not the main one, ended alone: the program runs on, no longer
    /// watched.
    ThreadEnded,
}

impl ExecWatch {
    pub(crate) fn new(pid: i32, tid: i32) -> ExecWatch {
        ExecWatch { pid, tid, watching: true, found: None, waiter: StopWaiter::start(pid, tid), trap_ignored: false }
    }

    /// Watch a started program dprobe let go (its library loaded) for the `exec` its thread
    /// `tid` is about to make: the thread is seized with `PTRACE_O_TRACEEXEC` alone, without
    /// stopping it. For a program that says when it is about to `exec` (dprobe's agent does),
    /// so that it is not traced the rest of the time.
    pub fn seize_thread(pid: i32, tid: i32) -> Result<ExecWatch, LoadError> {
        sys::seize(tid, libc::PTRACE_O_TRACEEXEC as u64)?;
        Ok(ExecWatch::new(pid, tid))
    }

    /// Say whether the program ignores `SIGTRAP` where the kernel cannot tell (dprobe's agent
    /// holds the signal, and passes the program's on as it would be taken): the program it
    /// executes then ignores it too, as the `exec` of a program untraced keeps "ignore".
    pub fn trap_ignored(&mut self, ignored: bool) {
        self.trap_ignored = ignored;
    }

    /// The watched thread.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Readable when the program has stopped or ended, which [`ExecWatch::poll`] then takes;
    /// `None` when there is nothing to wait for (a caller looks as often as it likes).
    pub fn stopped_fd(&self) -> Option<BorrowedFd<'_>> {
        self.waiter.as_ref().filter(|_| self.watching && self.found.is_none()).map(StopWaiter::fd)
    }

    /// The program.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Deliver the program's signals without waiting, keeping an `exec` or an end for the
    /// next [`ExecWatch::poll`]. For a tracer that waits on something else which the program
    /// must run for (an answer of code loaded into it that sends it a signal first).
    pub fn deliver_signals(&mut self) -> Result<(), LoadError> {
        if self.found.is_none() {
            match self.poll()? {
                Watched::Running => {}
                found => self.found = Some(found),
            }
        }
        Ok(())
    }

    /// Look at the program without waiting: its signals are delivered, its `exec` held.
    pub fn poll(&mut self) -> Result<Watched, LoadError> {
        if let Some(found) = self.found.take() {
            return Ok(found);
        }
        if !self.watching {
            return Ok(Watched::Running);
        }
        let said = self.waiter.as_ref().is_some_and(StopWaiter::take);
        let found = self.look();
        match (&found, self.waiter.take()) {
            // Ended: the thread's peek finds the end at once, and it ends.
            (Ok(Watched::Ended(_)), Some(waiter)) => waiter.end(WAITER_END),
            // The program is held (or let go): the thread ends at its next stop or end.
            (Ok(Watched::Executed(_) | Watched::Unheld(_)), _) => {}
            (_, waiter) => {
                if said {
                    waiter.iter().for_each(StopWaiter::looked);
                }
                self.waiter = waiter;
            }
        }
        found
    }

    /// Take the program's stops and deliver their signals, until it runs.
    fn look(&mut self) -> Result<Watched, LoadError> {
        loop {
            // An end is reported without reaping: until its parent reaps it, the program's
            // `/proc` entry stays (its name, for the events read after it ended).
            if let Some(status) = ended_unreaped(self.pid) {
                self.watching = false;
                return Ok(Watched::Ended(status));
            }
            let waited = match sys::wait_until(self.tid, std::time::Instant::now()) {
                // The watched thread made an `exec`: it has the process's id now.
                Err(e) if e.errno == libc::ECHILD && self.took_the_process_id() => continue,
                waited => waited?,
            };
            let Some((_, status)) = waited else { return Ok(Watched::Running) };
            if !libc::WIFSTOPPED(status) {
                self.watching = false;
                if self.tid != self.pid {
                    return Ok(ended_unreaped(self.pid).map_or(Watched::ThreadEnded, Watched::Ended));
                }
                return Ok(Watched::Ended(status));
            }
            let signal = libc::WSTOPSIG(status);
            match sys::event_of(status) {
                0 => sys::cont(self.tid, signal)?,
                libc::PTRACE_EVENT_EXEC => {
                    self.watching = false;
                    self.tid = self.pid;
                    return Ok(self.held_at_exec());
                }
                EVENT_STOP if is_stop_signal(signal) => {
                    if sys::listen(self.tid).is_err() {
                        sys::cont(self.tid, 0)?;
                    }
                }
                _ => sys::cont(self.tid, 0)?,
            }
        }
    }

    /// Stop watching: the program runs on untraced. One that ended meanwhile is left for its
    /// parent to reap (dprobe's own end hands it to the next reaper, as untraced). A main
    /// thread that was waiting in a system call is put back into it without being woken and
    /// stays traced, with no ptrace option, until the calling thread ends: the caller must be
    /// about to end (dprobe's tracing thread, once the program is let go), and passes on its stops until
    /// then if it waits for the program ([`crate::wait_for_command`]). See
    /// `Tracee::let_go_as_thread_ends` for why.
    pub fn end(mut self) {
        self.stop();
    }

    /// The program stopped at its `exec`: held where a library can be loaded, or let go.
    fn held_at_exec(&mut self) -> Watched {
        match Injector::at_exec(self.pid, self.trap_ignored) {
            Ok(held) => Watched::Executed(Box::new(held)),
            Err(e) => {
                let _ = sys::set_options(self.pid, libc::PTRACE_O_TRACEEXEC as u64);
                let _ = sys::detach(self.pid, 0);
                Watched::Unheld(e.to_string())
            }
        }
    }

    /// Stop watching the program where the watched thread is outside any system call the kernel
    /// restarts (the stop's signal delivered): a detach wakes a thread inside one, and a signal
    /// that comes in that moment can leave the call waiting on as if it had never come (see
    /// [`ExecWatch::end`] for the whole story). The tracer goes on.
    ///
    /// Where the thread is inside such a call, it is resumed (its call restarts as after any
    /// stop) and the watch comes back, still watching, with `false`; at a new program's `exec`
    /// (the program's `exec` ran meanwhile), with `true`, which the next [`ExecWatch::poll`]
    /// reports.
    pub fn end_at_rest(mut self) -> Result<(), (ExecWatch, bool)> {
        let Some(status) = self.stopped() else { return Ok(()) };
        let (event, signal) = (sys::event_of(status), libc::WSTOPSIG(status));
        if event == libc::PTRACE_EVENT_EXEC {
            self.found = Some(self.held_at_exec());
            return Err((self, true));
        }
        if sys::get_regs(self.tid).is_ok_and(|r| !crate::let_go::interrupted_call(&r)) {
            let _ = sys::detach(self.tid, if event == 0 { signal } else { 0 });
            return Ok(());
        }
        if crate::let_go::pass_on(self.tid, status) {
            self.watching = true;
            self.waiter = StopWaiter::start(self.pid, self.tid);
        }
        Err((self, false))
    }

    fn stop(&mut self) {
        let Some(status) = self.stopped() else { return };
        let (signal, group_stop) = match sys::event_of(status) {
            // The program's signal, not delivered yet: delivered as it goes.
            0 => (libc::WSTOPSIG(status), false),
            EVENT_STOP => (0, is_stop_signal(libc::WSTOPSIG(status))),
            _ => (0, false),
        };
        let _ = crate::let_go::let_thread_go(self.pid, self.tid, signal, group_stop);
    }

    /// Wait, without reaping, until the interrupted thread reports its stop or its end. A
    /// thread other than the main one may be in its `exec` meanwhile (the kernel ends the
    /// other threads first, which can take a while): its stop then comes under the process's
    /// id, which it has taken, and is waited for there (a wait for the old id would never
    /// return). `None` when there is nothing to wait for.
    fn peek_stop(&mut self) -> Option<libc::siginfo_t> {
        let flags = libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WNOTHREAD | libc::WNOHANG;
        loop {
            // SAFETY: a siginfo_t is plain data, which waitid fills.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits, without reaping or blocking, for our traced child; `info` is valid.
            let peeked = unsafe { libc::waitid(libc::P_PID, self.tid as libc::id_t, &mut info, flags) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: `info` was zeroed, and waitid fills it when it finds a change; its pid
            // stays 0 when nothing changed yet.
            let changed = unsafe { info.si_pid() } != 0;
            match peeked {
                0 if changed => return Some(info),
                0 => std::thread::sleep(std::time::Duration::from_millis(1)),
                _ if errno == Some(libc::EINTR) => {}
                _ if errno == Some(libc::ECHILD) && self.took_the_process_id() => {}
                _ => return None,
            }
        }
    }

    /// After a wait for a watched thread other than the main one found none (`ECHILD`): it
    /// made an `exec` (its end would have been taken by this tracer's wait, not lost), and has
    /// the process's id now, which is waited for from then on. `false` for the main thread.
    fn took_the_process_id(&mut self) -> bool {
        if self.tid == self.pid {
            return false;
        }
        self.tid = self.pid;
        true
    }

    /// Stop watching: the program interrupted, and the wait status of its stop taken (not if
    /// it ended, or could not be stopped).
    fn stopped(&mut self) -> Option<i32> {
        if !self.watching {
            return None;
        }
        self.watching = false;
        if sys::interrupt(self.tid).is_err() && self.tid != self.pid {
            // Gone, or it made an `exec` and has the process's id now.
            sys::interrupt(self.pid).ok()?;
            self.tid = self.pid;
        }
        let peeked = self.peek_stop();
        // Stopped or ended, not taken yet: the waiting thread sees it too, and ends.
        if let Some(waiter) = self.waiter.take().filter(|_| peeked.is_some()) {
            waiter.end(WAITER_END);
        }
        let info = peeked?;
        if matches!(info.si_code, libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED) {
            return None;
        }
        let (_, status) = sys::wait(self.tid).ok()?;
        libc::WIFSTOPPED(status).then_some(status)
    }
}

impl Drop for ExecWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The wait status of child `pid` if it has ended, without reaping it: its parent reaps it
/// (`waitpid`) once done with what `/proc` still shows of it. `None` while it runs or stops.
pub fn ended_unreaped(pid: i32) -> Option<i32> {
    // SAFETY: a siginfo_t is plain data, which waitid fills.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
    // SAFETY: peeks, without reaping, at our child; `info` is valid.
    let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: filled by waitid (zero when nothing is to report); for CLD_* codes the kernel
    // sets the child fields si_pid and si_status read.
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    if r != 0 || child == 0 {
        return None;
    }
    match info.si_code {
        libc::CLD_EXITED => Some((status & 0xff) << 8),
        libc::CLD_KILLED => Some(status & 0x7f),
        libc::CLD_DUMPED => Some((status & 0x7f) | 0x80),
        _ => None,
    }
}
