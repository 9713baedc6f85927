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
pub(crate) fn cont_pending(pid: i32) -> bool {
    let pending = |path: String, field: &str| {
        let status = std::fs::read_to_string(path).unwrap_or_default();
        let mask = status.lines().find_map(|l| l.strip_prefix(field)).map(str::trim).unwrap_or("0");
        u64::from_str_radix(mask, 16).is_ok_and(|m| m & crate::kept::bit(libc::SIGCONT) != 0)
    };
    if pending(format!("/proc/{pid}/status"), "ShdPnd:") {
        return true;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.into_iter().any(|t| pending(format!("{}/status", t.path().display()), "SigPnd:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_dropped_only_when_a_sigcont_was_taken_in_the_same_hold() {
        // This test's own process has no SIGCONT pending.
        let me = std::process::id() as i32;
        let mut h = HeldStops::default();
        h.new_hold();
        h.taken(1, libc::SIGCONT, false);
        h.new_hold();
        h.taken(2, libc::SIGSTOP, false);
        assert!(!h.continued(me, 2, libc::SIGSTOP, false), "SIGCONT in an earlier hold: the stop stands");
        h.taken(3, libc::SIGTSTP, false);
        h.taken(4, 0, true);
        h.taken(5, libc::SIGCONT, false);
        assert!(h.continued(me, 3, libc::SIGTSTP, false), "SIGCONT in the same hold");
        assert!(h.continued(me, 4, 0, true), "a group-stop too");
        assert!(!h.continued(me, 5, libc::SIGUSR1, false), "not a stop");
    }
}
