//! What can go wrong while tracing, and how a traced process ends.

use std::io;

use dprobe_core::ProbeError;

/// Why tracing failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Starting the program failed.
    #[error("cannot start `{program}`: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: io::Error,
    },
    /// Attaching to a running process failed.
    #[error("cannot trace process {pid}: {reason}")]
    Attach {
        /// The process.
        pid: i32,
        /// Why, in words (no such process, permission, already traced).
        reason: String,
    },
    /// A ptrace or memory operation failed.
    #[error("{0}")]
    Os(#[from] io::Error),
    /// The probe cannot be placed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The tracee is not stopped where the operation needs it to be.
    #[error("the traced process is not stopped")]
    NotStopped,
    /// A thread came back through the return trampoline with no return pending for it: the
    /// program copied or rewrote a hijacked return address.
    #[error("thread {tid} returned through the return trampoline with no return probe pending")]
    LostReturn {
        /// The thread.
        tid: i32,
    },
}

impl TraceError {
    pub(crate) fn other(text: impl Into<String>) -> TraceError {
        TraceError::Os(io::Error::other(text.into()))
    }
}

/// How the traced process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// Why [`crate::Tracee::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The process ended.
    Exited(Exit),
    /// The caller asked to stop (a signal handler, a deadline); the process still runs,
    /// traced, until it is detached or run again.
    Asked,
}
