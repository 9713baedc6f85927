//! The program's `SIGTRAP` action survives dprobe's traps.
//!
//! A trap is a forced signal. Where the thread blocks `SIGTRAP`, or the program ignores it,
//! the kernel sets the action to the default, for the whole process, before the tracer sees
//! the stop (`force_sig_info_to_task`); only the handler changes, the flags, mask and
//! restorer stay. The program's own handler, or its `SIG_IGN`, would be gone, and its next
//! `SIGTRAP` (a `raise`, a debugger's or a JIT's `int3`) would kill it, during the trace or
//! after it. (`trap_mask.rs` blocks the signal again; an action cannot be read back once
//! replaced.)
//!
//! So the action is noted while it is known to be the program's, and put back where it
//! matters: before one of the program's own `SIGTRAP`s is delivered, and as the tracer lets
//! the process go. It is known:
//! - at attach: read (an injected `rt_sigaction`) when `/proc` says it is caught or ignored;
//! - after an `exec`, which keeps only an ignored action, as `SIG_IGN` with nothing else;
//! - at each new thread or child, read where `/proc` says caught or ignored and no such
//!   action is noted: a program that sets its handler, then starts threads that block every
//!   signal (the common shape), is covered; one that sets it while traced and traps in a
//!   thread that blocks it before starting any is not;
//! - a forked child has its parent's.
//!
//! It is put back only where the action now is exactly what a trap leaves of the noted one
//! (the default handler, the same flags, mask and restorer). Anything else is the program's
//! own doing since, and is left alone. Reading and setting it takes a system call of the
//! program's thread made between system-call stops, not in a single step: the step's own trap
//! would set an ignored action to the default again (a handler is set in a step before the
//! program's own trap, whose delivery the step's stop then carries). Putting it back after every trap would
//! cost two such calls per hit; a program that reads its own action while traced sees the
//! default after a trap.
//!
//! Not covered: a vfork child's copy of the action (the child executes a new program or
//! exits; an ignored action it carries into the new program is lost).

use dprobe_arch::{Addr, Memory};

use crate::error::TraceError;
use crate::inject;
use crate::sys::{self, RemoteMemory};
use crate::tracee::Tracee;

const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;

/// The kernel's `struct sigaction` on x86-64, as `rt_sigaction` reads and writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Action {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

const ACTION_BYTES: usize = 32;

impl Action {
    fn to_bytes(self) -> [u8; ACTION_BYTES] {
        let mut b = [0u8; ACTION_BYTES];
        for (i, v) in [self.handler, self.flags, self.restorer, self.mask].into_iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; ACTION_BYTES]) -> Action {
        let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
        Action { handler: word(0), flags: word(1), restorer: word(2), mask: word(3) }
    }

    /// What a forced trap leaves of it.
    fn after_a_trap(self) -> Action {
        Action { handler: SIG_DFL, ..self }
    }
}

/// The program's `SIGTRAP` action when it is not the default, as last known.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrapAction(Option<Action>);

impl Tracee {
    /// Whether `/proc` says the program's `SIGTRAP` action is not the default, and no action
    /// of that kind is noted: [`Tracee::note_trap_action`] is then to read it.
    pub(crate) fn trap_action_unknown(&self) -> bool {
        let (ignored, caught) = sys::disposition(self.pid, libc::SIGTRAP);
        match self.trap_action.0.map(|a| a.handler) {
            Some(SIG_IGN) => !ignored,
            Some(_) => !caught,
            None => ignored || caught,
        }
    }

    /// Thread `tid` is stopped at the event of a thread or child it created: the action the
    /// program set before is noted (see [`Tracee::trap_action_unknown`]), from the exit of
    /// the system call (the event stop is inside it, and its return would overwrite the
    /// result of a call made there).
    pub(crate) fn note_trap_action_at_event(&mut self, tid: i32) -> Result<(), TraceError> {
        if self.trap_action_unknown() {
            crate::inject::finish_call(self.pid, tid)?;
            self.note_trap_action(tid);
        }
        Ok(())
    }

    /// Note the program's `SIGTRAP` action, read through thread `tid`, held at a stop with no
    /// signal to deliver. Best effort, as is putting it back: where the thread cannot make
    /// the call (it is gone, its stack is full), nothing is noted.
    pub(crate) fn note_trap_action(&mut self, tid: i32) {
        if let Ok(action) = exchange(tid, &mut self.memory, None, Call::Untrapped) {
            self.trap_action.0 = (action.handler != SIG_DFL).then_some(action);
        }
    }

    /// The process executed a new program (and is at its exec stop, no trap since): only an
    /// ignored action is kept, as nothing but `SIG_IGN` (the kernel's `flush_signal_handlers`).
    pub(crate) fn trap_action_after_exec(&mut self) {
        let (ignored, _) = sys::disposition(self.pid, libc::SIGTRAP);
        self.trap_action.0 = ignored.then_some(Action { handler: SIG_IGN, ..Action::default() });
    }

    /// A child forked from this process has its action.
    pub(crate) fn trap_action_of_parent(&mut self, parent: &Tracee) {
        self.trap_action = parent.trap_action;
    }

    /// Put the program's action back through thread `tid`, held at a stop with no signal to
    /// deliver, if one of dprobe's traps replaced it (see the module's comment). No trap of
    /// dprobe's may come after: the thread's last call for the tracer.
    pub(crate) fn put_trap_action_back(&mut self, tid: i32) {
        if let Some(noted) = self.trap_action.0 {
            self.trap_action.0 = put_back(self.pid, tid, &mut self.memory, noted, Call::Untrapped);
        }
    }

    /// Thread `tid` is in the delivery stop of a `SIGTRAP` of the program's own: the
    /// program's action is put back first (the kernel delivers with the action it finds
    /// then). Returns the signal to resume it with: none where the program ignores it (the
    /// call made for it leaves no delivery stop, and an ignored signal does nothing); else
    /// the `SIGTRAP`, delivered from the stop the call left, with its information set back.
    pub(crate) fn own_trap(&mut self, tid: i32) -> Result<i32, TraceError> {
        let Some(noted) = self.trap_action.0 else { return Ok(libc::SIGTRAP) };
        if noted.handler == SIG_IGN {
            self.put_trap_action_back(tid);
            return Ok(0);
        }
        let info = sys::siginfo(tid)?;
        self.trap_action.0 = put_back(self.pid, tid, &mut self.memory, noted, Call::Stepped);
        sys::set_siginfo(tid, &info)?;
        Ok(libc::SIGTRAP)
    }

    /// The same in a forked child let go untraced (at its first stop, `memory` its own): it
    /// has a copy of this process's action, replaced as this process's was.
    pub(crate) fn put_trap_action_back_in_child(&self, child: i32, memory: &mut RemoteMemory) {
        if let Some(noted) = self.trap_action.0 {
            put_back(child, child, memory, noted, Call::Untrapped);
        }
    }
}

/// How a thread makes a system call for the tracer.
#[derive(Clone, Copy)]
enum Call {
    /// In a single step: it ends in the step's stop, from which a signal can be delivered;
    /// the step's trap sets an ignored action to the default.
    Stepped,
    /// Between system-call stops: no trap, nothing delivered from where it ends.
    Untrapped,
}

/// Put `noted` back as process `pid`'s action, through its stopped thread `tid`, if the
/// action now is what a trap leaves of it; returns the action to note from now on. Best
/// effort: where the thread cannot make the call, the action stays the default.
fn put_back(pid: i32, tid: i32, memory: &mut RemoteMemory, noted: Action, call: Call) -> Option<Action> {
    if sys::disposition(pid, libc::SIGTRAP) != (false, false) {
        return Some(noted); // not the default: no trap replaced it since
    }
    match exchange(tid, memory, None, call) {
        Ok(now) if now == noted.after_a_trap() => {
            let _ = exchange(tid, memory, Some(noted), call);
            Some(noted)
        }
        // The program set the default itself: that is its action now.
        Ok(_) => None,
        Err(_) => Some(noted),
    }
}

/// Make stopped thread `tid` call `rt_sigaction(SIGTRAP, new, &old)`; returns the old action.
/// The two structures go on the thread's stack, below its red zone, whose bytes are put back
/// after.
fn exchange(tid: i32, memory: &mut RemoteMemory, new: Option<Action>, call: Call) -> Result<Action, TraceError> {
    const RED_ZONE: u64 = 128;
    let rsp = sys::get_regs(tid)?.rsp;
    let scratch = Addr(rsp.wrapping_sub(RED_ZONE + 2 * ACTION_BYTES as u64) & !15);
    let old_at = scratch.offset(ACTION_BYTES as u64);
    let mut kept = [0u8; 2 * ACTION_BYTES];
    memory.read(scratch, &mut kept)?;
    if let Some(new) = new {
        memory.write(scratch, &new.to_bytes())?;
    }
    let act = new.map_or(0, |_| scratch.0);
    let args = [libc::SIGTRAP as u64, act, old_at.0, 8, 0, 0];
    let called = match call {
        Call::Stepped => inject::inject_syscall(tid, memory, libc::SYS_rt_sigaction as u64, args),
        Call::Untrapped => inject::inject_syscall_between_stops(tid, memory, libc::SYS_rt_sigaction as u64, args),
    };
    let mut old = [0u8; ACTION_BYTES];
    let read = memory.read(old_at, &mut old);
    memory.write(scratch, &kept)?;
    let r = called?;
    if r != 0 {
        return Err(TraceError::Injected { call: "rt_sigaction", errno: r.wrapping_neg() as i32 });
    }
    read?;
    Ok(Action::from_bytes(&old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_goes_to_the_kernel_in_its_layout_and_back() {
        let a = Action { handler: 0x401000, flags: 0x0400_0004, restorer: 0x7f00_0000_1000, mask: 1 << 9 };
        let b = a.to_bytes();
        assert_eq!(&b[..8], &0x401000u64.to_le_bytes());
        assert_eq!(&b[24..], &(1u64 << 9).to_le_bytes());
        assert_eq!(Action::from_bytes(&b), a);
        assert_eq!(a.after_a_trap(), Action { handler: SIG_DFL, ..a });
    }
}
