//! Making a stopped thread execute something for the tracer: one instruction (to leave
//! dprobe's code), or a system call (to map or unmap dprobe's pages) through a `syscall`
//! instruction the process already has. A signal that arrives
//! meanwhile is the program's: it is held back while the tracer works and queued again
//! afterwards, so that the program receives it when it resumes, never swallowed.

use dprobe_arch::{syscall_code, Addr, Memory};
use dprobe_sym::read_maps_of;

use crate::error::TraceError;
use crate::sys::{self, RemoteMemory};
use crate::tracee::EVENT_STOP;

/// Execute one instruction of stopped thread `tid`; signals that arrive meanwhile are added
/// to `held`.
///
/// The step ends with a `SIGTRAP` the kernel forces on the thread, and a forced signal the
/// thread blocks has its action reset to the default for the whole process: the program's own
/// `SIGTRAP` handler (or that of dprobe's agent, loaded earlier) would be gone, and its next
/// trap kill it. A thread that blocks it (a new thread before its start routine, one that
/// blocks every signal) is stepped without, and its mask put back.
fn step_holding(tid: i32, held: &mut Vec<libc::siginfo_t>) -> Result<(), TraceError> {
    let trap = 1u64 << (libc::SIGTRAP - 1);
    let mask = sys::sigmask(tid)?;
    if mask & trap == 0 {
        return step_unblocked(tid, held, false);
    }
    sys::set_sigmask(tid, mask & !trap)?;
    let stepped = step_unblocked(tid, held, true);
    match (sys::set_sigmask(tid, mask), stepped) {
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e.into()),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// [`step_holding`] of a thread that does not block `SIGTRAP`; `was_blocked`: it did until
/// now, and a `SIGTRAP` the program sent itself meanwhile may be pending.
fn step_unblocked(tid: i32, held: &mut Vec<libc::siginfo_t>, was_blocked: bool) -> Result<(), TraceError> {
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
        if signal == libc::SIGTRAP && sys::event_of(status) == 0 && was_blocked {
            // The step's trap comes from the kernel (a positive code); one the program sent
            // itself while it blocked it, pending until now, is the program's: held.
            let info = sys::siginfo(tid)?;
            if info.si_code <= 0 {
                held.push(info);
                continue;
            }
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

/// Bring thread `tid` of process `pid`, stopped at an event inside a system call (the exec
/// stop, inside `execve`), to the next instruction boundary: the system call's own return
/// would overwrite the result of one injected there (and the instruction never run). One
/// single step finishes the system call and stops before the next instruction executes.
pub fn leave_event_stop(pid: i32, tid: i32) -> Result<(), TraceError> {
    step(pid, tid)
}

/// Make stopped thread `tid` execute system call `nr` with `args` and return its result: its
/// registers are saved, it is pointed at a `syscall` instruction already in the process's
/// code ([`syscall_insn`]) and single-stepped, and its registers are put back. No code is
/// written: another thread running the code around the stopped one's RIP must never meet a
/// `syscall` there. A thread stopped inside an interrupted system call keeps its restart
/// state: the saved registers carry it. A signal that arrives during the step stays pending
/// for the program.
pub fn inject_syscall(tid: i32, memory: &mut RemoteMemory, nr: u64, args: [u64; 6]) -> Result<u64, TraceError> {
    let at = syscall_insn(memory)?;
    let saved = sys::get_regs(tid)?;
    let mut r = saved;
    (r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (nr, args[0], args[1], args[2], args[3], args[4], args[5]);
    r.rip = at.0;
    let mut held = Vec::new();
    let result = sys::set_regs(tid, &r)
        .map_err(TraceError::from)
        .and_then(|()| step_holding(tid, &mut held))
        .and_then(|()| Ok(sys::get_regs(tid)?.rax));
    sys::set_regs(tid, &saved)?;
    release(memory.pid(), tid, &held)?;
    result
}

/// A `syscall` instruction in the process's code, which no one writes: the vDSO's first,
/// else one in a mapped file's read-only code (the C library has many). Any two bytes
/// `0f 05` will do, even inside a longer instruction: the thread is pointed at them and
/// executes exactly one instruction. Found once per image and checked before each use (the
/// program may unload a library, or dprobe place a probe there).
pub(crate) fn syscall_insn(memory: &mut RemoteMemory) -> Result<Addr, TraceError> {
    let code = syscall_code();
    if let Some(at) = memory.syscall_insn {
        let mut now = vec![0u8; code.len()];
        if memory.read(at, &mut now).is_ok() && now == code {
            return Ok(at);
        }
    }
    let pid = memory.pid();
    let maps = read_maps_of(pid as u32)?;
    let vdso = maps.iter().filter(|m| m.path.as_deref() == Some("[vdso]"));
    let files =
        maps.iter().filter(|m| m.exec && m.read && !m.write && m.path.as_deref().is_some_and(|p| p.starts_with('/')));
    for m in vdso.chain(files) {
        if let Some(at) = find_in(memory, m.start, m.end, &code) {
            memory.syscall_insn = Some(at);
            return Ok(at);
        }
    }
    Err(TraceError::NoSyscallInsn { pid })
}

/// The first `needle` in `[start, end)` of the process's memory.
fn find_in(memory: &mut RemoteMemory, start: Addr, end: Addr, needle: &[u8]) -> Option<Addr> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = start.0;
    while at < end.0 {
        let len = CHUNK.min(end.0 - at) as usize;
        memory.read(Addr(at), &mut buf[..len]).ok()?;
        if let Some(i) = buf[..len].windows(needle.len()).position(|w| w == needle) {
            return Some(Addr(at + i as u64));
        }
        if at + len as u64 >= end.0 {
            break;
        }
        // Chunks overlap by one byte less than the needle, so a pair across two is seen.
        at += (len - (needle.len() - 1)) as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracee::Tracee;

    #[test]
    fn a_system_call_injected_once_the_exec_stop_is_left_runs() {
        let t = Tracee::spawn("/bin/sh", &["-c", "exec /bin/true"]).unwrap();
        let pid = t.pid();
        sys::cont(pid, 0).unwrap();
        let tid = loop {
            let (tid, status) = sys::wait(-1).unwrap();
            assert!(libc::WIFSTOPPED(status), "{status:#x}");
            if sys::event_of(status) == libc::PTRACE_EVENT_EXEC {
                break tid;
            }
            sys::cont(tid, 0).unwrap();
        };
        let mut memory = RemoteMemory::open(pid).unwrap();
        leave_event_stop(pid, tid).unwrap();
        let got = inject_syscall(tid, &mut memory, libc::SYS_getpid as u64, [0; 6]).unwrap();
        assert_eq!(got, pid as u64, "getpid ran");
        // SAFETY: kills the test's own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
