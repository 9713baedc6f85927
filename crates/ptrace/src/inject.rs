//! Making a stopped thread execute something for the tracer: one instruction (to leave
//! dprobe's code), or a system call (to map or unmap dprobe's pages). A signal that arrives
//! meanwhile is the program's: it is held back while the tracer works and queued again
//! afterwards, so that the program receives it when it resumes, never swallowed.

use dprobe_arch::{syscall_code, Addr, Memory};

use crate::error::TraceError;
use crate::sys::{self, RemoteMemory};
use crate::tracee::EVENT_STOP;

/// Execute one instruction of stopped thread `tid`; signals that arrive meanwhile are added
/// to `held`.
fn step_holding(tid: i32, held: &mut Vec<libc::siginfo_t>) -> Result<(), TraceError> {
    // Each signal met is taken off the program's queue (until the step is done), so the
    // signals end; interrupts are bounded.
    let mut interrupts = 0;
    loop {
        sys::single_step(tid)?;
        let (_, status) = sys::wait(tid)?;
        if !libc::WIFSTOPPED(status) {
            return Err(TraceError::Gone { tid });
        }
        let signal = libc::WSTOPSIG(status);
        if sys::event_of(status) == libc::PTRACE_EVENT_EXIT {
            // Killed meanwhile (or the program exits): it will not step again.
            return Err(TraceError::Gone { tid });
        }
        if sys::event_of(status) == EVENT_STOP {
            // An interrupt still pending from stopping every thread (or a group-stop) came
            // before the instruction ran: step again.
            interrupts += 1;
            if interrupts > 16 {
                return Err(TraceError::Stuck { tid, place: "a single step" });
            }
            continue;
        }
        if sys::event_of(status) != 0 || signal == libc::SIGTRAP {
            return Ok(());
        }
        // The program's signal stopped it before the instruction ran: hold it, step again.
        held.push(sys::siginfo(tid)?);
    }
}

/// Queue the held signals again for thread `tid`.
fn release(pid: i32, tid: i32, held: &[libc::siginfo_t]) -> Result<(), TraceError> {
    for info in held {
        sys::queue_again(pid, tid, info)?;
    }
    Ok(())
}

/// Execute one instruction of stopped thread `tid` of process `pid`; the program's signals
/// that arrive meanwhile stay pending for it.
pub fn step(pid: i32, tid: i32) -> Result<(), TraceError> {
    let mut held = Vec::new();
    let stepped = step_holding(tid, &mut held);
    release(pid, tid, &held)?;
    stepped
}

/// Make stopped thread `tid` execute system call `nr` with `args` and return its result: its
/// registers and the bytes at its RIP are saved, a `syscall` instruction is written there
/// and single-stepped, and everything is put back. A thread stopped inside an interrupted
/// system call keeps its restart state: the saved registers carry it. A signal that arrives
/// during the step stays pending for the program.
pub fn inject_syscall(tid: i32, memory: &mut RemoteMemory, nr: u64, args: [u64; 6]) -> Result<u64, TraceError> {
    let saved = sys::get_regs(tid)?;
    let at = Addr(saved.rip);
    let syscall = syscall_code();
    let mut original = vec![0u8; syscall.len()];
    memory.read(at, &mut original)?;
    memory.write(at, &syscall)?;
    let mut r = saved;
    (r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (nr, args[0], args[1], args[2], args[3], args[4], args[5]);
    let mut held = Vec::new();
    let result = sys::set_regs(tid, &r)
        .map_err(TraceError::from)
        .and_then(|()| step_holding(tid, &mut held))
        .and_then(|()| Ok(sys::get_regs(tid)?.rax));
    memory.write(at, &original)?;
    sys::set_regs(tid, &saved)?;
    release(memory.pid(), tid, &held)?;
    result
}
