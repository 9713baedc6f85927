//! A stop signal the tracer holds, and a `SIGCONT` that came after it.
//!
//! When `SIGCONT` is sent, the kernel continues a stopped program and drops the stop signals
//! pending for it; when a stop signal is sent, it drops a pending `SIGCONT`. A stop signal
//! the tracer took off a thread's queue (its delivery stop, while every thread is held to
//! place or remove probes) or a group-stop it holds is pending for neither: given to the
//! thread later, after the `SIGCONT`, it would stop the program for good (`kill -STOP` then
//! `kill -CONT` during an attach left it stopped, about once in 60 tries). So a held stop is
//! dropped, as the kernel would have dropped it, when a `SIGCONT` is pending as it would be
//! given (sent after every stop signal: a later stop signal would have dropped it), or was
//! taken off a queue while the threads were held. The order in which the threads report two
//! signals is not the order in which they came, so a `SIGCONT` taken in the same hold counts
//! as after the stop: of a stop and a continue sent within the same few milliseconds, the
//! program is left running, never stopped for good.

use std::collections::BTreeSet;

use crate::error::SysError;
use crate::sys;
use crate::thread::is_stop_signal;

/// The threads holding a stop, and whether a `SIGCONT` was taken, in one hold of the threads.
#[derive(Debug, Default)]
pub(crate) struct HeldStops {
    stops: BTreeSet<i32>,
    cont_taken: bool,
}

impl HeldStops {
    /// Every thread is being stopped: a new hold begins.
    pub(crate) fn new_hold(&mut self) {
        self.cont_taken = false;
    }

    /// Thread `tid` was stopped to receive `signal` (or, `group`, is held in a group-stop).
    pub(crate) fn taken(&mut self, tid: i32, signal: i32, group: bool) {
        if group || is_stop_signal(signal) {
            self.stops.insert(tid);
        } else if signal == libc::SIGCONT {
            self.cont_taken = true;
        }
    }

    /// Whether the stop thread `tid` of process `pid` holds (`signal`, or a group-stop) is
    /// to be dropped as it leaves it: a `SIGCONT` came after it. It is forgotten either way.
    pub(crate) fn continued(&mut self, pid: i32, tid: i32, signal: i32, group: bool) -> bool {
        let held = self.stops.remove(&tid);
        (group || is_stop_signal(signal)) && ((held && self.cont_taken) || cont_pending(pid))
    }
}

/// Queue signal `info`, held back while thread `tid` of process `pid` ran for the tracer,
/// again; but not a stop signal with a `SIGCONT` pending, which came after it (the kernel
/// would have dropped the stop then, and queued now it would drop the `SIGCONT`).
pub(crate) fn queue_again(pid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), SysError> {
    if is_stop_signal(info.si_signo) && cont_pending(pid) {
        return Ok(());
    }
    sys::queue_again(pid, tid, info)
}

/// Whether `SIGCONT` is pending for process `pid` or one of its threads.
fn cont_pending(pid: i32) -> bool {
    sys::is_pending_anywhere(pid, libc::SIGCONT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_dropped_only_when_a_sigcont_was_taken_in_the_same_hold_or_is_pending() {
        let world = std::rc::Rc::new(std::cell::RefCell::new(crate::fake::World::default()));
        let _fake = sys::install_fake(Box::new(crate::fake::Fake(world.clone())));
        let pid = 100;
        let mut h = HeldStops::default();
        h.new_hold();
        h.taken(1, libc::SIGCONT, false);
        h.new_hold();
        h.taken(2, libc::SIGSTOP, false);
        assert!(!h.continued(pid, 2, libc::SIGSTOP, false), "SIGCONT in an earlier hold: the stop stands");
        h.taken(3, libc::SIGTSTP, false);
        h.taken(4, 0, true);
        h.taken(5, libc::SIGCONT, false);
        assert!(h.continued(pid, 3, libc::SIGTSTP, false), "SIGCONT in the same hold");
        assert!(h.continued(pid, 4, 0, true), "a group-stop too");
        assert!(!h.continued(pid, 5, libc::SIGUSR1, false), "not a stop");
        // A SIGCONT pending for a thread, in a later hold: it came after the stop.
        h.new_hold();
        h.taken(6, libc::SIGTTIN, false);
        world.borrow_mut().pending.insert(7, crate::kept::bit(libc::SIGCONT));
        assert!(h.continued(pid, 6, libc::SIGTTIN, false), "SIGCONT pending");
        assert!(!h.continued(pid, 7, libc::SIGUSR1, false), "not a stop");
    }
}
