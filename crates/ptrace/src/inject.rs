//! Making a stopped thread execute something for the tracer: one instruction (to leave
//! dprobe's code), or a system call (to map or unmap dprobe's pages) through a `syscall`
//! instruction the process already has. A signal that arrives
//! meanwhile is the program's: it is held back while the tracer works and queued again
//! afterwards, so that the program receives it when it resumes, never swallowed.

use dprobe_arch::{syscall_code, Addr, Memory};
use dprobe_sym::read_maps_of;

use crate::error::TraceError;
use crate::kept;
use crate::sys::{self, RemoteMemory};
use crate::tracee::EVENT_STOP;

/// Signals met in one step after which it is given up (a fault of the stepped instruction
/// comes back at each try).
const MAX_SIGNALS_IN_A_STEP: usize = 64;

/// Execute one instruction of stopped thread `tid`, which is in the delivery stop of signal
/// `carried` (0: none, or another kind of stop); `its_call`: the instruction is a system call
/// of the program's ([`makes_system_call`]). The program's signals stay
/// pending meanwhile (see `kept`), `carried` among them where it can be; those that cannot
/// (`SIGSTOP`, a `SIGTRAP` the program sent itself) are added to `held`. Returns whether
/// `carried` was given back to the thread's queue.
///
/// The step ends with a `SIGTRAP` the kernel forces on the thread, and a forced signal the
/// thread blocks has its action reset to the default for the whole process: the program's own
/// `SIGTRAP` handler (or that of dprobe's agent, loaded earlier) would be gone, and its next
/// trap kill it. A thread that blocks it (a new thread before its start routine, one that
/// blocks every signal) is stepped without, and its mask put back.
///
/// An instruction of the program's that makes a system call may set the mask itself
/// (`rt_sigprocmask`): it is stepped with the program's mask (`SIGTRAP` aside), so that what
/// it sets is what the program asked for; a signal that comes is then blocked alone, and the
/// mask is put back only if the program did not change it.
fn step_keeping(tid: i32, carried: i32, its_call: bool, held: &mut Vec<libc::siginfo_t>) -> Result<bool, TraceError> {
    let trap = kept::bit(libc::SIGTRAP);
    let mask = sys::sigmask(tid)?;
    let carried = if kept::can_keep(carried) && !its_call { carried } else { 0 };
    let mut during = mask & !trap;
    if !its_call {
        during |= kept::KEPT_DURING_STEPS;
    }
    if carried != 0 {
        during |= kept::bit(carried);
    }
    if during != mask {
        sys::set_sigmask(tid, during)?;
    }
    let stepped = step_blocking(tid, carried, &mut during, held);
    if let Err(e) = &stepped {
        if e.is_gone() {
            return stepped.map(|()| false);
        }
    }
    if during != mask && sys::sigmask(tid)? == during {
        sys::set_sigmask(tid, mask)?;
    }
    stepped.map(|()| carried != 0)
}

/// Whether the instruction at thread `tid`'s RIP is a system call (`syscall`, `sysenter`,
/// `int 0x80`).
fn makes_system_call(pid: i32, tid: i32) -> Result<bool, TraceError> {
    let rip = sys::get_regs(tid)?.rip;
    let mut memory = RemoteMemory::open(pid).map_err(TraceError::from)?;
    let mut two = [0u8; 2];
    // Unreadable: it faults when stepped, and makes no call.
    Ok(memory.read(Addr(rip), &mut two).is_ok() && matches!(two, [0x0f, 0x05] | [0x0f, 0x34] | [0xcd, 0x80]))
}

/// [`step_keeping`] once the mask is set to `during` (which a signal met and given back adds
/// to): resumed first with `carried`.
fn step_blocking(tid: i32, carried: i32, during: &mut u64, held: &mut Vec<libc::siginfo_t>) -> Result<(), TraceError> {
    let mut interrupts = 0;
    let mut signals = 0;
    let mut resume_with = carried;
    loop {
        sys::single_step(tid, resume_with)?;
        resume_with = 0;
        let (_, status) = sys::wait(tid)?;
        if !libc::WIFSTOPPED(status) {
            return Err(TraceError::Gone { tid });
        }
        let signal = libc::WSTOPSIG(status);
        match sys::event_of(status) {
            // Killed meanwhile (or the program exits): it will not step again.
            libc::PTRACE_EVENT_EXIT => return Err(TraceError::Gone { tid }),
            EVENT_STOP => {
                // An interrupt still pending from stopping every thread (or a group-stop)
                // came before the instruction ran: step again.
                interrupts += 1;
                if interrupts > 16 {
                    return Err(TraceError::Stuck { tid, place: "a single step" });
                }
                continue;
            }
            0 => {}
            _ => return Ok(()),
        }
        signals += 1;
        if signals > MAX_SIGNALS_IN_A_STEP {
            return Err(TraceError::Stuck { tid, place: "a single step" });
        }
        if signal == libc::SIGTRAP {
            // The step's trap comes from the kernel (a positive code); one the program sent
            // itself is the program's: held.
            let info = sys::siginfo(tid)?;
            if info.si_code > 0 {
                return Ok(());
            }
            held.push(info);
        } else if let Some(given_back) = kept::resume_with(tid, signal, kept::KEPT_DURING_STEPS)? {
            // Not blocked when it was taken: given back to the kernel as the step goes on.
            *during |= kept::bit(signal);
            resume_with = given_back;
        } else {
            // `SIGSTOP`, or a fault of the instruction before it ran.
            held.push(sys::siginfo(tid)?);
        }
    }
}

/// Queue the held signals again for thread `tid`.
fn release(pid: i32, tid: i32, held: &[libc::siginfo_t]) -> Result<(), TraceError> {
    for info in held {
        crate::continued::queue_again(pid, tid, info)?;
    }
    Ok(())
}

/// Execute one instruction of stopped thread `tid` of process `pid`, in the delivery stop of
/// `carried` (0: none, or another stop); the program's signals that arrive meanwhile stay
/// pending for it. Returns whether `carried` was given back to its queue (to be delivered
/// when it resumes); when not, it is still the thread's to receive.
pub fn step(pid: i32, tid: i32, carried: i32) -> Result<bool, TraceError> {
    let mut held = Vec::new();
    let stepped = makes_system_call(pid, tid).and_then(|its_call| step_keeping(tid, carried, its_call, &mut held));
    release(pid, tid, &held)?;
    stepped
}

/// Bring thread `tid` of process `pid`, stopped at an event inside a system call (the exec
/// stop, inside `execve`), to the next instruction boundary: the system call's own return
/// would overwrite the result of one injected there (and the instruction never run). One
/// single step finishes the system call and stops before the next instruction executes.
pub fn leave_event_stop(pid: i32, tid: i32) -> Result<(), TraceError> {
    step(pid, tid, 0).map(drop)
}

/// Make stopped thread `tid` execute system call `nr` with `args` and return its result: its
/// registers are saved, it is pointed at a `syscall` instruction already in the process's
/// code ([`syscall_insn`]) and single-stepped, and its registers are put back. No code is
/// written: another thread running the code around the stopped one's RIP must never meet a
/// `syscall` there. A thread stopped inside an interrupted system call keeps its restart
/// state: the saved registers carry it. A signal that arrives during the step stays pending
/// for the program.
pub fn inject_syscall(tid: i32, memory: &mut RemoteMemory, nr: u64, args: [u64; 6]) -> Result<u64, TraceError> {
    inject_syscall_carrying(tid, memory, nr, args, 0).map(|(result, _)| result)
}

/// [`inject_syscall`] with no trap after the call, for a call whose effect the trap would
/// undo: a single step ends with a forced `SIGTRAP`, which sets an ignored `SIGTRAP`'s action
/// to the default (see `trap_action`). The thread makes the call between its entry and exit
/// stops (`PTRACE_SYSCALL`) and is left at the exit stop, its registers back. Where it was
/// taken out of a call of its own, they say that the call starts again, as the kernel would
/// have made it on resuming the thread from the stop it was held at with no signal: `tid`
/// must be held at such a stop. The program's signals stay pending meanwhile.
pub(crate) fn inject_syscall_between_stops(
    tid: i32,
    memory: &mut RemoteMemory,
    nr: u64,
    args: [u64; 6],
) -> Result<u64, TraceError> {
    let at = syscall_insn(memory)?;
    crate::seccomp_check::allows(memory.pid(), tid, nr, args, at.0)?;
    let saved = sys::get_regs(tid)?;
    let mut r = saved;
    (r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (nr, args[0], args[1], args[2], args[3], args[4], args[5]);
    r.rip = at.0;
    sys::set_regs(tid, &r)?;
    let mut held = Vec::new();
    let result = to_syscall_stops_keeping(tid, 2, &mut held).and_then(|()| Ok(sys::get_regs(tid)?.rax));
    if let Err(e @ TraceError::Gone { .. }) = result {
        return Err(e);
    }
    sys::set_regs(tid, &restarting(saved))?;
    release(memory.pid(), tid, &held)?;
    result
}

/// Bring thread `tid` of process `pid`, stopped at an event inside a system call (a clone,
/// a fork), to the call's exit stop without a trap (see [`inject_syscall_between_stops`]),
/// where it may make a call for the tracer.
pub(crate) fn finish_call(pid: i32, tid: i32) -> Result<(), TraceError> {
    let mut held = Vec::new();
    let finished = to_syscall_stops_keeping(tid, 1, &mut held);
    if let Err(e @ TraceError::Gone { .. }) = finished {
        return Err(e);
    }
    release(pid, tid, &held)?;
    finished
}

/// [`to_syscall_stop`], `times` times, for stopped thread `tid`, which blocks the signals
/// kept meanwhile (see `kept`): its mask is put back after, unless it is gone.
pub(crate) fn to_syscall_stops_keeping(
    tid: i32,
    times: usize,
    held: &mut Vec<libc::siginfo_t>,
) -> Result<(), TraceError> {
    let mask = sys::sigmask(tid)?;
    sys::set_sigmask(tid, mask | kept::KEPT_DURING_STEPS)?;
    let reached = (0..times).try_for_each(|_| to_syscall_stop(tid, held));
    if let Err(e @ TraceError::Gone { .. }) = reached {
        return Err(e);
    }
    sys::set_sigmask(tid, mask)?;
    reached
}

/// Registers `r` of a thread held at a stop with no signal, as the kernel makes them when it
/// resumes from there: a system call it was taken out of is entered again
/// (`arch_do_signal_or_restart`). Set at a system call's exit stop, the kernel does nothing
/// more to them.
fn restarting(mut r: libc::user_regs_struct) -> libc::user_regs_struct {
    if crate::let_go::interrupted_call(&r) {
        r.rax = match r.rax as i64 {
            sys::ERESTART_RESTARTBLOCK => libc::SYS_restart_syscall as u64,
            _ => r.orig_rax,
        };
        r.rip -= 2;
        r.orig_rax = u64::MAX;
    }
    r
}

/// Signal stops on the way to a system-call stop after which it is given up: each takes one
/// signal off the thread's queue.
const MAX_SIGNALS_TO_A_CALL: usize = 1 << 16;
/// Other stops (an interrupt left pending, a group-stop) before it is given up.
const MAX_OTHER_STOPS: usize = 16;

/// Run stopped thread `tid`, which blocks the signals kept (see `kept`), to its next
/// system-call stop (the entry of its next call, or the exit of the one it is in). Signals
/// that come on the way stay pending; those that cannot (`SIGSTOP`, a `SIGTRAP` of the
/// program's) are added to `held`.
fn to_syscall_stop(tid: i32, held: &mut Vec<libc::siginfo_t>) -> Result<(), TraceError> {
    let mut others = 0;
    let mut resume_with = 0;
    while held.len() < MAX_SIGNALS_TO_A_CALL && others < MAX_OTHER_STOPS {
        sys::cont_to_syscall(tid, resume_with)?;
        resume_with = 0;
        let (_, status) = sys::wait(tid)?;
        if !libc::WIFSTOPPED(status) || sys::event_of(status) == libc::PTRACE_EVENT_EXIT {
            return Err(TraceError::Gone { tid });
        }
        if sys::event_of(status) != 0 {
            // An interrupt left pending, or a group-stop: on to the call.
            others += 1;
            continue;
        }
        let info = sys::siginfo(tid)?;
        // A system-call stop reports SIGTRAP with the stop's own code; a SIGTRAP sent to the
        // program has a code of its sender's.
        let (trap, signal) = (libc::SIGTRAP, libc::WSTOPSIG(status));
        if signal & 0x7f == trap && (info.si_code == trap || info.si_code == trap | 0x80) {
            return Ok(());
        }
        match kept::resume_with(tid, signal, kept::KEPT_DURING_STEPS)? {
            Some(given_back) => {
                others += 1;
                resume_with = given_back;
            }
            None => held.push(info),
        }
    }
    Err(TraceError::Stuck { tid, place: "the way to a system call" })
}

/// Give signal `signal` back to the queue of stopped thread `tid`, which is in that signal's
/// delivery stop, so that it can run for the tracer and then receive it, unchanged, when it
/// resumes (see `kept`). Returns whether it was given back (a signal that cannot be blocked
/// stays the thread's to receive from here).
pub fn give_back_signal(tid: i32, memory: &mut RemoteMemory, signal: i32) -> Result<bool, TraceError> {
    if !kept::can_keep(signal) {
        return Ok(false);
    }
    inject_syscall_carrying(tid, memory, libc::SYS_getpid as u64, [0; 6], signal).map(|(_, given)| given)
}

/// [`inject_syscall`] of a thread in the delivery stop of `carried`, given back to its queue
/// as the call is made (see [`step_keeping`]).
fn inject_syscall_carrying(
    tid: i32,
    memory: &mut RemoteMemory,
    nr: u64,
    args: [u64; 6],
    carried: i32,
) -> Result<(u64, bool), TraceError> {
    let at = syscall_insn(memory)?;
    crate::seccomp_check::allows(memory.pid(), tid, nr, args, at.0)?;
    let saved = sys::get_regs(tid)?;
    let mut r = saved;
    (r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (nr, args[0], args[1], args[2], args[3], args[4], args[5]);
    r.rip = at.0;
    let mut held = Vec::new();
    let result = sys::set_regs(tid, &r).map_err(TraceError::from).and_then(|()| {
        // Not one of the program's system calls: its mask is never the call's business.
        let given = step_keeping(tid, carried, false, &mut held)?;
        Ok((sys::get_regs(tid)?.rax, given))
    });
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
