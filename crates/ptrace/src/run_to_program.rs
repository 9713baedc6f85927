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
use crate::sys;

/// How long the thread may take to get back to the program's code before it is interrupted
/// wherever it is (in a call that waits, or a long one), and tried again later.
const RUN_PATIENCE: Duration = Duration::from_millis(20);
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
}

/// Whether thread `tid` of process `pid`, stopped, may be let run to a breakpoint: its mask
/// does not block `SIGTRAP` and the program does not ignore it.
pub(crate) fn may_run_to(pid: i32, tid: i32) -> Result<bool, TraceError> {
    let trap = 1u64 << (libc::SIGTRAP - 1);
    let (ignored, _) = sys::disposition(pid, libc::SIGTRAP);
    Ok(sys::sigmask(tid)? & trap == 0 && !ignored)
}

/// Let stopped thread `tid` run until it executes the instruction at `at`, or, after
/// [`RUN_PATIENCE`], until an interrupt stops it wherever it is. The program's signals that
/// come meanwhile are delivered. The breakpoint is disarmed before this returns, or goes with
/// the thread: the kernel keeps a thread's debug registers after its tracer detaches.
pub(crate) fn run_to(tid: i32, at: u64) -> Result<Ran, TraceError> {
    if sys::set_debug_register(tid, 0, at).and_then(|()| sys::set_debug_register(tid, 7, DR7_EXECUTE_DR0)).is_err() {
        // No breakpoint to be had (the kernel's slots taken by perf): stays where it is.
        disarm(tid)?;
        return Ok(Ran::Stopped);
    }
    sys::cont(tid, 0)?;
    let deadline = Instant::now() + RUN_PATIENCE;
    let mut interrupted = false;
    let mut reached = false;
    loop {
        // Once interrupted, waited for without a bound: the breakpoint stays armed until the
        // thread stops, and one left armed with no tracer would kill the program when reached.
        // A thread the interrupt does not stop at once sleeps where the kernel does not stop
        // it (a `vfork`'s parent, a read of a slow disk), and stops as it wakes.
        let stop = if interrupted { Some(sys::wait(tid)?) } else { sys::wait_until(tid, deadline)? };
        let Some((_, status)) = stop else {
            sys::interrupt(tid)?;
            interrupted = true;
            continue;
        };
        if !libc::WIFSTOPPED(status) {
            return Ok(Ran::Ended);
        }
        let signal = libc::WSTOPSIG(status);
        if sys::event_of(status) != 0 {
            // The interrupt's stop (or a group stop, which holds it as well). Stopped where it
            // is; a breakpoint reached first left it there.
            disarm(tid)?;
            return Ok(Ran::Stopped);
        }
        if signal == libc::SIGTRAP && !reached && is_the_breakpoint(tid, at)? {
            reached = true;
            disarm(tid)?;
            if !interrupted {
                return Ok(Ran::Stopped);
            }
            // The interrupt sent is still to come: it stops the thread as it resumes, before
            // it runs an instruction, and its stop is waited for here.
            sys::cont(tid, 0)?;
            continue;
        }
        // The program's signal: delivered (a handler runs, and may even reach the address).
        sys::cont(tid, signal)?;
    }
}

/// Whether the `SIGTRAP` thread `tid` stopped for is the breakpoint's at `at`.
fn is_the_breakpoint(tid: i32, at: u64) -> Result<bool, TraceError> {
    let info = sys::siginfo(tid)?;
    Ok(info.si_code == TRAP_HWBKPT && sys::get_regs(tid)?.rip == at)
}

fn disarm(tid: i32) -> Result<(), TraceError> {
    sys::set_debug_register(tid, 7, 0)?;
    sys::set_debug_register(tid, 0, 0)?;
    Ok(())
}
