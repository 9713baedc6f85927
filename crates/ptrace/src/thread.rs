//! What the tracer knows of each thread of the traced process: one record per thread, and
//! the one state it is in.

use crate::error::TraceError;
use crate::sys;

/// One thread of the traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thread {
    pub state: State,
}

/// Where a thread is, as the tracer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Running (until its next stop is seen).
    Running,
    /// Stopped, and held by the tracer until it resumes it.
    Stopped(Stop),
}

/// The kind of stop a held thread is in, which says how it may be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// An interrupt, event or single-step stop: nothing to deliver (a signal given when
    /// resuming from an event stop would be dropped by the kernel).
    Event,
    /// A signal-delivery stop: the signal (0: none) goes to the program when it resumes, the
    /// one kind of stop where the kernel delivers it.
    Signal(i32),
    /// A group-stop: the program itself is stopped (Ctrl-Z, `SIGSTOP`), and stays stopped
    /// when resumed (`PTRACE_LISTEN`) until it is continued.
    Group,
}

impl Thread {
    pub fn running() -> Thread {
        Thread { state: State::Running }
    }

    pub fn stopped(stop: Stop) -> Thread {
        Thread { state: State::Stopped(stop) }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped(_))
    }

    /// The signal to give the thread as it leaves its stop (resumed or detached).
    pub fn signal(&self) -> i32 {
        match self.state {
            State::Stopped(Stop::Signal(s)) => s,
            _ => 0,
        }
    }
}

/// Resume held thread `tid` from its stop: the signal of a signal-delivery stop is
/// delivered; a thread in a group-stop stays stopped until the program is continued.
pub(crate) fn resume(tid: i32, stop: Stop) -> Result<(), TraceError> {
    match stop {
        Stop::Group => match sys::listen(tid) {
            // A thread dprobe made run since (to map its page) is no longer in its
            // group-stop: SIGSTOP puts it back into it.
            Err(e) if e.errno == libc::EIO => Ok(sys::cont(tid, libc::SIGSTOP)?),
            other => Ok(other?),
        },
        Stop::Signal(signal) => Ok(sys::cont(tid, signal)?),
        Stop::Event => Ok(sys::cont(tid, 0)?),
    }
}

/// Whether wait `status` is a group-stop's (`PTRACE_EVENT_STOP` with a stop signal): the
/// program is stopped, and stays so (`PTRACE_LISTEN`) until it is continued.
pub(crate) fn is_group_stop(status: i32) -> bool {
    sys::event_of(status) == crate::tracee::EVENT_STOP && is_stop_signal(libc::WSTOPSIG(status))
}

/// Whether `signal` stops the program (a group-stop when it is delivered).
pub(crate) fn is_stop_signal(signal: i32) -> bool {
    matches!(signal, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}
