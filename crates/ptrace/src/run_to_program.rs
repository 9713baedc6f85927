//! Letting a thread that runs in the C library go on until it is back in the program's code,
//! where it holds none of the library's locks.
//!
//! Interrupted at random, a thread that spends nearly all its time in the C library (creating
//! and joining threads, copying memory, making system calls that do not wait) is almost never
//! stopped in the program's own code: of 2,000 interrupts of a thread that starts and joins
//! threads in a loop, 45 found it at a safe place, and one attach in fifty gave up after its
//! 200 tries. But where the program called the C library is known (the return address of the
//! library's outermost frame, `WaitCheck::return_into_program`), and the thread gets there in
//! microseconds.
//!
//! It is stopped there by a hardware breakpoint: debug register 0 holds the address, for this
//! thread alone, no byte of code changes, and no other thread can meet it. Its trap is a forced
//! `SIGTRAP` that the tracer takes and drops. A forced signal that the thread blocks, or that
//! the program ignores, has its action set to the default and is unblocked by the kernel
//! (`force_sig_info_to_task`): the breakpoint is armed only where the thread does not block
//! `SIGTRAP` and the program does not ignore it, and where the function the program called
//! cannot change either before it returns (`lock_free_wait::NOT_RUN_THROUGH`).

use std::time::{Duration, Instant};

use crate::error::TraceError;
use crate::kept::bit;
use crate::sys;

/// How long the thread may take to get back to the program's code before it is interrupted
/// wherever it is (in a call that waits, or a long one), and tried again later.
const RUN_PATIENCE: Duration = Duration::from_millis(20);
/// How long an interrupted thread is waited for once the breakpoint is disarmed.
const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// Debug register 7: breakpoint 0 enabled for this thread, on execution of its one byte.
const DR7_EXECUTE_DR0: u64 = 1;
/// `si_code` of a hardware breakpoint's `SIGTRAP`.
const TRAP_HWBKPT: i32 = 4;

/// Where a thread let run to the program's code stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Stopped (at the address, or where an interrupt found it in time): its registers say
    /// where.
    Stopped,
    /// It ended.
    Ended,
    /// A signal of the program's came, and the thread did not stop within [`STOP_PATIENCE`]
    /// of the interrupt that followed it (the breakpoint disarmed).
    NoStop,
}

/// Whether thread `tid` of process `pid`, stopped, may be let run to a breakpoint: its mask
/// does not block `SIGTRAP` and the program does not ignore it.
pub(crate) fn may_run_to(pid: i32, tid: i32) -> Result<bool, TraceError> {
    let (ignored, _) = sys::disposition(pid, libc::SIGTRAP);
    Ok(sys::sigmask(tid)? & bit(libc::SIGTRAP) == 0 && !ignored)
}

/// Let stopped thread `tid` of process `pid` run until it executes the instruction at `at`,
/// or, after [`RUN_PATIENCE`], until an interrupt stops it wherever it is. The breakpoint is
/// disarmed before this returns, whatever happened (or goes with the thread): the kernel keeps
/// a thread's debug registers after its tracer detaches, and one left armed would kill the
/// program when reached.
pub(crate) fn run_to(pid: i32, tid: i32, at: u64) -> Result<Ran, TraceError> {
    let mut breakpoint = Breakpoint { tid, armed: true };
    if sys::set_debug_register(tid, 0, at).and_then(|()| sys::set_debug_register(tid, 7, DR7_EXECUTE_DR0)).is_err() {
        // No breakpoint to be had (the kernel's slots taken by perf): stays where it is.
        breakpoint.disarm()?;
        return Ok(Ran::Stopped);
    }
    sys::cont(tid, 0)?;
    let deadline = Instant::now() + RUN_PATIENCE;
    // An interrupt sent whose stop has not come yet.
    let mut interrupt_pending = false;
    let mut reached = false;
    loop {
        let stop = match (interrupt_pending, breakpoint.armed) {
            // Waited for without a bound while the breakpoint is armed: a thread the interrupt
            // does not stop at once sleeps where the kernel does not stop it (a read of a slow
            // disk), and stops as it wakes.
            (true, true) => Some(sys::wait(tid)?),
            (true, false) => match sys::wait_until(tid, Instant::now() + STOP_PATIENCE)? {
                Some(stop) => Some(stop),
                None => return Ok(Ran::NoStop),
            },
            (false, _) => sys::wait_until(tid, deadline)?,
        };
        let Some((_, status)) = stop else {
            sys::interrupt(tid)?;
            interrupt_pending = true;
            continue;
        };
        if !libc::WIFSTOPPED(status) {
            breakpoint.armed = false;
            return Ok(Ran::Ended);
        }
        let signal = libc::WSTOPSIG(status);
        if sys::event_of(status) != 0 {
            // The interrupt's stop (or a group stop, which holds it as well).
            interrupt_pending = false;
            // The kernel reports an interrupt before the signals queued with it: the
            // breakpoint's trap, reached a moment before, may wait behind this stop. It is
            // taken here, not left to be delivered later (forced, it is not blocked; a standard
            // signal, it is the only `SIGTRAP` pending).
            if breakpoint.armed && !reached && trap_waits(pid, tid)? {
                sys::cont(tid, 0)?;
                continue;
            }
            breakpoint.disarm()?;
            return Ok(Ran::Stopped);
        }
        if signal == libc::SIGTRAP && breakpoint.armed && is_the_breakpoint(tid, at)? {
            reached = true;
            breakpoint.disarm()?;
            if !interrupt_pending {
                return Ok(Ran::Stopped);
            }
            // The interrupt sent is still to come: it stops the thread as it resumes, before
            // it runs an instruction, and its stop is waited for here.
            sys::cont(tid, 0)?;
            continue;
        }
        // The program's signal. Delivered with the breakpoint disarmed (a handler that blocks
        // `SIGTRAP` could reach the address), the thread stopped as the handler starts, or
        // where the signal leaves it: tried again from there.
        breakpoint.disarm()?;
        if !interrupt_pending {
            sys::interrupt(tid)?;
            interrupt_pending = true;
        }
        sys::cont(tid, signal)?;
    }
}

/// Whether a `SIGTRAP` that thread `tid` of process `pid` does not block is pending for it.
fn trap_waits(pid: i32, tid: i32) -> Result<bool, TraceError> {
    Ok(sys::is_pending(pid, tid, libc::SIGTRAP) && sys::sigmask(tid)? & bit(libc::SIGTRAP) == 0)
}

/// Whether the `SIGTRAP` thread `tid` stopped for is the breakpoint's at `at`.
fn is_the_breakpoint(tid: i32, at: u64) -> Result<bool, TraceError> {
    let info = sys::siginfo(tid)?;
    Ok(info.si_code == TRAP_HWBKPT && sys::get_regs(tid)?.rip == at)
}

/// Debug register 0 of a thread, armed until [`Breakpoint::disarm`], and disarmed when
/// dropped on the way out of an error where the thread can still take it.
struct Breakpoint {
    tid: i32,
    armed: bool,
}

impl Breakpoint {
    fn disarm(&mut self) -> Result<(), TraceError> {
        if self.armed {
            sys::set_debug_register(self.tid, 7, 0)?;
            self.armed = false;
            // The address alone arms nothing.
            let _ = sys::set_debug_register(self.tid, 0, 0);
        }
        Ok(())
    }
}

impl Drop for Breakpoint {
    fn drop(&mut self) {
        let _ = self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{interrupt_stop, signal_stop, Call, Fake, World};

    const TID: i32 = 100;
    const AT: u64 = 0x40_1000;

    /// Debug register 7's offset in `struct user`.
    fn dr7() -> u64 {
        (std::mem::offset_of!(libc::user, u_debugreg) + 7 * 8) as u64
    }

    /// The kernel reports a stop (here a group stop, as for an interrupt) before the
    /// breakpoint's trap queued with it: the trap is taken then and dropped, never delivered
    /// to the program (whose default action would kill it), and the breakpoint disarmed.
    #[test]
    fn a_trap_queued_behind_a_stop_is_taken_and_dropped_and_the_breakpoint_disarmed() {
        let world = World::new();
        let _guard = sys::install_fake(Box::new(Fake(world.clone())));
        {
            let mut w = world.borrow_mut();
            w.regs(TID).rip = AT;
            w.after_cont.entry(TID).or_default().push_back(interrupt_stop());
            w.pend_after_cont.entry(TID).or_default().push_back(1 << (libc::SIGTRAP - 1));
            w.trap_code = Some(TRAP_HWBKPT);
        }
        assert_eq!(run_to(TID, TID, AT).unwrap(), Ran::Stopped);
        let w = world.borrow();
        assert!(!w.calls.contains(&Call::Cont(TID, libc::SIGTRAP)), "{:?}", w.calls);
        assert!(!w.calls.iter().any(|c| matches!(c, Call::Tgkill(..) | Call::Queue(..))), "{:?}", w.calls);
        assert_eq!(w.user_words[&(TID, dr7())], 0, "disarmed");
        assert_eq!(w.pending[&TID] & (1 << (libc::SIGTRAP - 1)), 0, "the trap taken, not left pending");
        assert!(w.stops.is_empty(), "{:?}", w.stops);
    }

    /// A signal of the program's that comes first is delivered with the breakpoint disarmed,
    /// and the thread stopped by an interrupt sent before it goes.
    #[test]
    fn a_programs_signal_is_delivered_with_the_breakpoint_disarmed() {
        let world = World::new();
        let _guard = sys::install_fake(Box::new(Fake(world.clone())));
        {
            let mut w = world.borrow_mut();
            w.stops.push_back((TID, signal_stop(libc::SIGUSR1)));
            w.after_cont.entry(TID).or_default().push_back(interrupt_stop());
        }
        assert_eq!(run_to(TID, TID, AT).unwrap(), Ran::Stopped);
        let w = world.borrow();
        let interrupt = w.calls.iter().position(|c| *c == Call::Interrupt(TID)).expect("interrupted");
        let delivered = w.calls.iter().position(|c| *c == Call::Cont(TID, libc::SIGUSR1)).expect("delivered");
        assert!(interrupt < delivered, "{:?}", w.calls);
        assert_eq!(w.user_words[&(TID, dr7())], 0, "disarmed");
    }
}
