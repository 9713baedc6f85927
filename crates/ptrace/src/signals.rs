//! The program's signals and dprobe's out-of-line copies. A thread resumed into a copy with a
//! signal pending (one that came while it was stopped at the probe, or during the copy's few
//! instructions) would run the handler with its interrupted address inside dprobe's page: a
//! page that is unmapped at detach, and the handler may still be running then (or block, or
//! `longjmp` later). As the kernel holds signals back while a uprobe's instruction executes
//! out of line (`uprobe_deny_signal`), such a signal is delivered only once the thread has
//! stepped out of the copy, back in the program's code, with its information unchanged.
//! A fault of the copy itself (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE` raised by the
//! instruction) is the program's to see where it happened.

use dprobe_arch::Addr;

use crate::error::TraceError;
use crate::sys;
use crate::tracee::Tracee;

/// The most instructions of a copy (its relocated instruction and the jump back, with the
/// few moves around a far operand).
const MAX_STEPS: usize = 64;

impl Tracee {
    /// Whether `rip` is inside an out-of-line copy.
    pub(crate) fn in_copy(&self, rip: u64) -> bool {
        self.sites.values().filter_map(|s| s.prepared.slot.as_ref()).any(|s| s.contains(Addr(rip)))
    }

    /// Resume thread `tid` from the signal-delivery stop of `signal`, delivering it; a thread
    /// inside an out-of-line copy first steps out of it (signals that come meanwhile stay
    /// pending).
    pub(crate) fn deliver_signal(&mut self, tid: i32, signal: i32) -> Result<(), TraceError> {
        if signal == 0 || !self.in_copy(sys::get_regs(tid)?.rip) {
            return Ok(sys::cont(tid, signal)?);
        }
        let info = sys::siginfo(tid)?;
        let fault = matches!(signal, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) && info.si_code > 0;
        if fault {
            return Ok(sys::cont(tid, signal)?);
        }
        for _ in 0..MAX_STEPS {
            self.step(tid)?;
            if !self.in_copy(sys::get_regs(tid)?.rip) {
                // A single-step stop is a signal-delivery stop: the signal goes from there,
                // with the information it came with.
                sys::set_siginfo(tid, &info)?;
                return Ok(sys::cont(tid, signal)?);
            }
        }
        Err(TraceError::Stuck { tid, place: "an out-of-line copy" })
    }
}
