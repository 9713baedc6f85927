//! What can go wrong while tracing, and how a traced process ends.

use std::io;

use dprobe_arch::MemoryFault;
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
    /// The program was started but could not be executed (`execve` failed in the child).
    #[error("cannot start `{program}`: {why}")]
    NotExecutable {
        /// The program.
        program: String,
        /// Why, in words.
        why: String,
    },
    /// Attaching to a running process failed.
    #[error("cannot trace process {pid}: {reason}")]
    Attach {
        /// The process.
        pid: i32,
        /// Why, in words (no such process, permission, already traced).
        reason: String,
    },
    /// A ptrace, wait or memory system call failed.
    #[error(transparent)]
    Sys(SysError),
    /// The thread is gone: killed or exited while the tracer looked at it. Its exit is
    /// reported by `wait` later; it never ends a trace.
    #[error("thread {tid} is gone")]
    Gone {
        /// The thread.
        tid: i32,
    },
    /// The traced process's memory refused a read or a write.
    #[error("in the traced process: {0}")]
    Memory(#[from] MemoryFault),
    /// A system call dprobe made the tracee run (to map or protect its pages) failed.
    #[error("the traced process's `{call}` failed: {}", io::Error::from_raw_os_error(*errno))]
    Injected {
        /// The system call.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// The process has no `syscall` instruction in code that dprobe could make one of its
    /// threads run (dprobe never writes one into code that other threads may be running).
    #[error("process {pid} has no `syscall` instruction in its code through which dprobe could map its pages")]
    NoSyscallInsn {
        /// The process.
        pid: i32,
    },
    /// A system call dprobe must make in the process is not made: the seccomp filters of the
    /// thread would act on the program (`seccomp_check`).
    #[error("dprobe does not make the system call `{call}` it needs in process {pid}: {why}")]
    Seccomp {
        /// The process.
        pid: i32,
        /// The call.
        call: &'static str,
        /// Why, in words.
        why: String,
    },
    /// Reading the process's description in `/proc` failed.
    #[error("{0}")]
    Os(#[from] io::Error),
    /// The probe cannot be placed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The tracee is not stopped where the operation needs it to be.
    #[error("the traced process is not stopped")]
    NotStopped,
    /// `run_to_entry` was asked for while a probe is on the entry point.
    #[error("a probe is on the entry point already: place it after run_to_entry")]
    EntryProbed,
    /// The program has no entry point in its auxiliary vector.
    #[error("no AT_ENTRY in the auxiliary vector")]
    NoEntry,
    /// The program ended before it reached its entry point.
    #[error("the program ended before its entry point ({})", ended(*.0))]
    EndedBeforeEntry(Exit),
    /// A thread stepped out of dprobe's code did not leave it in the steps it takes.
    #[error("thread {tid} did not leave {place}")]
    Stuck {
        /// The thread.
        tid: i32,
        /// Which code: "a return stub", "an out-of-line copy".
        place: &'static str,
    },
    /// A thread came back through the return trampoline with no return pending for it: the
    /// program copied or rewrote a hijacked return address.
    #[error("thread {tid} returned through the return trampoline with no return probe pending")]
    LostReturn {
        /// The thread.
        tid: i32,
    },
    /// Detaching was given up while threads were still to stop (the user insisted): the
    /// probes' original code is back, the threads that had stopped are let go, the others
    /// are let go when the tracing thread ends.
    #[error("gave up waiting for {waiting} thread(s) to stop; the original code is restored")]
    GaveUp {
        /// How many threads had not stopped.
        waiting: usize,
    },
    /// A thread did not stop within a bound because it cannot (asleep in the kernel, a `vfork`
    /// parent waiting for its child): the threads that stopped are let go.
    #[error("gave up waiting for {waiting} thread(s) to stop: {reason}")]
    Blocked {
        /// How many threads had not stopped.
        waiting: usize,
        /// Which, and why, in words.
        reason: String,
    },
    /// A return probe was hit with no return trampoline mapped.
    #[error("no return trampoline is mapped")]
    NoTrampoline,
}

/// A system call that failed, on which thread, with which errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{call} (thread {tid}): {}", io::Error::from_raw_os_error(*errno))]
pub struct SysError {
    /// The call (`PTRACE_CONT`, `waitpid`, ...).
    pub call: &'static str,
    /// The thread (or process) it was about.
    pub tid: i32,
    /// The errno.
    pub errno: i32,
}

impl SysError {
    /// Whether the thread it was about is gone (`ESRCH`).
    pub fn gone(&self) -> bool {
        self.errno == libc::ESRCH
    }
}

impl From<SysError> for TraceError {
    /// `ESRCH` says the thread vanished: [`TraceError::Gone`], never an error that ends a trace.
    fn from(e: SysError) -> TraceError {
        if e.gone() {
            TraceError::Gone { tid: e.tid }
        } else {
            TraceError::Sys(e)
        }
    }
}

impl TraceError {
    /// A started `program` that ended (wait status `ended`) before its `execve`: killed by a
    /// signal that came as it started, or its `execv` failed (its child exits with the
    /// `errno`, see `sys::fork_seized`).
    pub(crate) fn not_started(program: &str, ended: i32) -> TraceError {
        if libc::WIFSIGNALED(ended) {
            return TraceError::EndedBeforeEntry(Exit::Signal(libc::WTERMSIG(ended)));
        }
        let errno = Some(libc::WEXITSTATUS(ended)).filter(|&e| libc::WIFEXITED(ended) && (1..127).contains(&e));
        TraceError::NotExecutable { program: program.to_owned(), why: crate::exec_failure::why(program, errno) }
    }

    /// Whether it says a thread vanished (its exit comes through `wait`).
    pub fn is_gone(&self) -> bool {
        matches!(self, TraceError::Gone { .. })
    }
}

pub use dprobe_core::Exit;

/// Why [`crate::Tracee::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The process ended.
    Exited(Exit),
    /// The caller asked to stop (a signal handler, a deadline); the process still runs,
    /// traced, until it is detached or run again.
    Asked,
}

/// How a program ended, as a message says it: `exit status 3`, `killed by SIGSEGV`.
pub(crate) fn ended(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit status {c}"),
        Exit::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
            Ok(signal) => format!("killed by {}", signal.as_str()),
            Err(_) => format!("killed by signal {s}"),
        },
    }
}

#[cfg(test)]
mod ended_tests {
    use super::*;

    #[test]
    fn an_exit_reads_as_a_message_says_it() {
        assert_eq!(ended(Exit::Code(3)), "exit status 3");
        assert_eq!(ended(Exit::Signal(11)), "killed by SIGSEGV");
        assert_eq!(ended(Exit::Signal(31)), "killed by SIGSYS");
        assert_eq!(ended(Exit::Signal(40)), "killed by signal 40");
        assert_eq!(ended(Exit::Signal(0)), "killed by signal 0");
    }
}
