//! dprobe's own death never harms the traced program.
//!
//! When a ptrace tracer dies, the kernel detaches its tracees: a thread held at a trap stop
//! gets SIGTRAP, and the `int3`s left in the code kill the program at its next hit; a
//! kernel engine's events stay defined. Nothing can be repaired after the fact, so the
//! tracing is owned by a process that outlives the one the user sees and may kill:
//! [`split`] forks at once, before any thread, signal handler or change to a target.
//!
//! - The child, the *holder*, does everything: plans, starts or attaches, traces, writes
//!   the events and the summary. [`split`] returns in it.
//! - The parent, the *front*, keeps the PID the user knows. It waits for the holder and
//!   ends with its status (for a started command, the command's own, relayed), and passes
//!   on the stop signals a process sends it. The terminal's (Ctrl-C, a hangup) reach the
//!   holder directly, being sent to the whole foreground process group.
//! - The front holds the only writing end of a pipe the holder reads ([`Front`]): forwarded
//!   signals come through it, and its end (the front died, `kill -9` included) tells the
//!   holder to stop as on a SIGINT sent to dprobe alone: every probe removed, every byte
//!   restored, the program let go to run on untraced.

mod front;
mod link;
mod signal_sets;

use std::io;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{fork, pipe2, ForkResult};

pub use link::{Forwarded, Front};
pub use signal_sets::{ignored_signals, pending_signals};

/// Split into front and holder. Returns in the holder, with its link to the front; the
/// front never returns: it exits with the holder's status.
///
/// `stops` are the signals the front passes on. Those dprobe was started with ignored stay
/// ignored (see [`ignored_signals`]): the front does not pass them on. Must be called while
/// the process has a single thread.
pub fn split(stops: &[Signal]) -> io::Result<Front> {
    let ignored = ignored_signals()?;
    let passed: Vec<Signal> = stops.iter().copied().filter(|s| !ignored.contains(*s)).collect();
    // The stop signals and SIGCHLD are held from now on in the front, which reads them from
    // a signalfd (no handler, no thread): a stop signal sent at any moment is passed on,
    // never lost.
    let mut waited = SigSet::empty();
    for &s in stops.iter().chain(&[Signal::SIGCHLD]) {
        waited.add(s);
    }
    let before = waited.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let made = (|| {
        let signals = SignalFd::with_flags(&waited, SfdFlags::SFD_CLOEXEC)?;
        let (reading, writing) = pipe2(OFlag::O_CLOEXEC)?;
        Ok::<_, nix::Error>((signals, reading, writing))
    })();
    let (signals, reading, writing) = match made {
        Ok(made) => made,
        Err(e) => {
            let _ = before.thread_set_mask();
            return Err(e.into());
        }
    };
    // Taken before the fork: once the front is gone the holder's parent is whoever adopted it.
    let front_pid = std::process::id() as i32;
    // SAFETY: the caller promises a single thread (nothing has started one yet), so the
    // child may run any code: no lock can be held by a thread that does not exist there.
    let forked = unsafe { fork() };
    match forked {
        Err(e) => {
            let _ = before.thread_set_mask();
            Err(e.into())
        }
        Ok(ForkResult::Child) => {
            // The holder: the front's end and signals closed here (the holder's programs
            // never get them: close-on-exec), the signal mask as dprobe found it (programs
            // started inherit it).
            drop(writing);
            drop(signals);
            before.thread_set_mask()?;
            Ok(Front::new(front_pid, reading))
        }
        Ok(ForkResult::Parent { child }) => {
            drop(reading);
            front::run(child, writing.into(), &signals, stops, &passed)
        }
    }
}
