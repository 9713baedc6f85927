//! The program's `SIGTRAP` action survives dprobe's traps.
//!
//! A trap is a forced signal. Where the thread blocks `SIGTRAP`, or the program ignores it,
//! the kernel sets the action to the default, for the whole process, before the tracer sees
//! the stop (`force_sig_info_to_task`); only the handler changes, the flags, mask and
//! restorer stay. The program's own handler, or its `SIG_IGN`, would be gone, and its next
//! `SIGTRAP` (a `raise`, a debugger's or a JIT's `int3`) would kill it, during the trace or
//! after it. (`trap_mask.rs` opens the signal in the threads that block it, which then reset
//! nothing; a thread that blocks it later, or a handler of `SIGTRAP` itself, still traps with
//! it blocked.)
//!
//! So the action is noted while it is known to be the program's, and put back where it
//! matters: before one of the program's own `SIGTRAP`s is delivered, and as the tracer lets
//! the process go. It is known:
//! - at attach: read (an injected `rt_sigaction`) when `/proc` says it is caught or ignored;
//! - after an `exec`, which keeps only an ignored action, as `SIG_IGN` with nothing else;
//! - as the program sets it through the C library: dprobe's own probe on `__libc_sigaction`,
//!   through which `sigaction`, `signal` and `sigset` go, placed with the first probe, reads
//!   the action from the call's argument (a handler that calls a probed function, and so
//!   traps with `SIGTRAP` blocked, is the common case); a call that reads the action (its
//!   third argument) has it put back first, so that the program reads its own;
//! - at each new thread or child, read where `/proc` says caught or ignored and no action of
//!   that kind is noted (a raw `rt_sigaction` before a thread that blocks every signal);
//! - a forked child has its parent's.
//!
//! An action set by a raw system call and replaced at a trap before any thread is created is
//! not known. It is put back only where the action now is what a trap leaves of the noted one
//! (the default handler, the same flags and mask), with the handler back. Anything else is
//! the program's own doing since, and is left alone.
//!
//! Reading and setting it takes a system call of the program's thread, made between
//! system-call stops, not in a single step: the step's own trap would set an ignored action
//! to the default again. (A handler is set in a step before the program's own trap, whose
//! delivery the step's stop then carries.) Putting it back after every trap would cost two
//! such calls per hit: it is put back where the program reads it through the C library
//! (`sigaction`, `signal`); a raw `rt_sigaction` that reads it while traced sees the default
//! after a trap.
//!
//! A child that shared the memory (`vfork`, `posix_spawn`) and executes a new program takes
//! the action noted in its parent: its own copy is the parent's as dprobe's traps left it. An
//! ignored action noted before an `exec` stays noted after it. Not covered: a `posix_spawn`
//! whose attributes set `SIGTRAP` to the default (`POSIX_SPAWN_SETSIGDEF`) in a program that
//! ignores it: its new program is taken to ignore it as well (so it is under the agent,
//! which passes on what the parent set).

use dprobe_arch::{Addr, Memory};
use dprobe_sym::{Function, Mapping, Symbols};

use crate::error::TraceError;
use crate::inject;
use crate::kept::bit;
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

    /// Whether action `now` is what a forced trap leaves of this one: the default handler,
    /// the same flags and mask (the restorer is not compared: a `sigaction` seen at its call
    /// does not show the one the C library gives the kernel).
    fn replaced_by_a_trap(self, now: Action) -> bool {
        now.handler == SIG_DFL && (now.flags, now.mask) == (self.flags, self.mask)
    }

    /// The action the C library's `sigaction` gives the kernel for `user`, the bytes of its
    /// `struct sigaction` (handler, a 128-byte mask, `int` flags, restorer): the kernel keeps
    /// the flags it knows and a mask without `SIGKILL` and `SIGSTOP`, and the C library sets
    /// `SA_RESTORER` with its own restorer (not known here).
    fn set_through_libc(user: &[u8; USER_SIGACTION_BYTES]) -> Action {
        let word = |at: usize| u64::from_le_bytes(user[at..at + 8].try_into().unwrap());
        let flags = u64::from(u32::from_le_bytes(user[136..140].try_into().unwrap()));
        let unblockable = bit(libc::SIGKILL) | bit(libc::SIGSTOP);
        Action {
            handler: word(0),
            flags: (flags | SA_RESTORER) & KNOWN_FLAGS,
            restorer: 0,
            mask: word(8) & !unblockable,
        }
    }
}

/// The size of the C library's `struct sigaction` on x86-64.
const USER_SIGACTION_BYTES: usize = 152;
const SA_RESTORER: u64 = 0x0400_0000;
/// The flags the kernel keeps (`UAPI_SA_FLAGS` on x86-64).
const KNOWN_FLAGS: u64 = (libc::SA_NOCLDSTOP
    | libc::SA_NOCLDWAIT
    | libc::SA_SIGINFO
    | libc::SA_ONSTACK
    | libc::SA_RESTART
    | libc::SA_NODEFER
    | libc::SA_RESETHAND) as u64
    | SA_RESTORER
    | 0x800; // SA_EXPOSE_TAGBITS

/// The C library's function every `sigaction` and `signal` goes through.
const LIBC_SIGACTION: &str = "__libc_sigaction";

/// The program's `SIGTRAP` action, and dprobe's probe on the C library's `sigaction`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrapAction {
    /// The action when it is not the default, as last known.
    noted: Option<Action>,
    /// Whether the probe on `__libc_sigaction` is placed.
    watched: bool,
}

impl Tracee {
    /// Whether `/proc` says the program's `SIGTRAP` action is of another kind than the one
    /// noted (ignored, caught): [`Tracee::note_trap_action`] is then to read it. The default,
    /// where an action is noted, is what a trap leaves of it: it stays noted.
    pub(crate) fn trap_action_unknown(&self) -> bool {
        let (ignored, caught) = sys::disposition(self.pid, libc::SIGTRAP);
        match self.trap_action.noted.map(|a| a.handler) {
            Some(SIG_IGN) => caught,
            Some(_) => ignored,
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
            self.trap_action.noted = (action.handler != SIG_DFL).then_some(action);
        }
    }

    /// The process executed a new program (and is at its exec stop, no trap since): only an
    /// ignored action is kept, as nothing but `SIG_IGN` (the kernel's `flush_signal_handlers`).
    /// An action noted as ignored before is too: one of dprobe's traps set it to the default
    /// before the `exec` (or, in a child that shared the memory, before the child copied it),
    /// and the program, untraced, would have kept "ignore". Its C library is another.
    pub(crate) fn trap_action_after_exec(&mut self) {
        let (ignored, _) = sys::disposition(self.pid, libc::SIGTRAP);
        let ignored = ignored || self.trap_action.noted.is_some_and(|a| a.handler == SIG_IGN);
        let noted = ignored.then_some(Action { handler: SIG_IGN, ..Action::default() });
        self.trap_action = TrapAction { noted, watched: false };
    }

    /// Place dprobe's probe on the C library's `__libc_sigaction` (through held thread
    /// `tid`), if it is not placed yet: each action the program sets through the C library is
    /// then noted as it is set. Best effort: without it, the action is read at the moments
    /// the module's comment lists.
    pub(crate) fn watch_sigaction(&mut self, tid: i32, maps: &[Mapping], symbols: &Symbols) {
        if self.trap_action.watched {
            return;
        }
        let libc = |f: &&Function| &*f.name == LIBC_SIGACTION && f.object_file_name().starts_with("libc.");
        let Some(f) = symbols.functions().iter().find(libc).cloned() else { return };
        if !self.sites.contains_key(&f.start) && self.new_site(tid, f.start, &f, maps, None).is_err() {
            return;
        }
        self.sites.get_mut(&f.start).expect("placed").sigaction_watch = true;
        self.trap_action.watched = true;
    }

    /// The program calls `__libc_sigaction(signal, act, ...)` (dprobe's probe on its entry):
    /// an action it sets for `SIGTRAP` is the one to note.
    pub(crate) fn sigaction_called(&mut self, signal: u64, act: u64) {
        if signal != libc::SIGTRAP as u64 || act == 0 {
            return;
        }
        let mut user = [0u8; USER_SIGACTION_BYTES];
        // Unreadable: the call fails (`EFAULT`) and sets nothing.
        if self.memory.read(Addr(act), &mut user).is_ok() {
            let action = Action::set_through_libc(&user);
            self.trap_action.noted = (action.handler != SIG_DFL).then_some(action);
        }
    }

    /// The C library's signal-frame restorer, as the noted action has it (not known for an
    /// action seen at its `sigaction` call).
    pub(crate) fn trap_restorer(&self) -> Option<u64> {
        self.trap_action.noted.map(|a| a.restorer).filter(|&r| r != 0)
    }

    /// A child forked from this process has its action.
    pub(crate) fn trap_action_of_parent(&mut self, parent: &Tracee) {
        self.trap_action = parent.trap_action;
    }

    /// Put the program's action back through thread `tid`, held at a stop with no signal to
    /// deliver, if one of dprobe's traps replaced it (see the module's comment): as the tracer
    /// lets the thread go (no trap of dprobe's may come after), or just before the program
    /// reads the action (at dprobe's probe on `__libc_sigaction`, which a boosted or emulated
    /// first instruction leaves with no trap before the call).
    pub(crate) fn put_trap_action_back(&mut self, tid: i32) {
        if let Some(noted) = self.trap_action.noted {
            self.trap_action.noted = put_back(self.pid, tid, &mut self.memory, noted, Call::Untrapped);
        }
    }

    /// Thread `tid` is in the delivery stop of `signal`, the program's own: the signal to
    /// resume it with (see [`Tracee::own_trap`] for a `SIGTRAP`).
    pub(crate) fn deliverable(&mut self, tid: i32, signal: i32) -> Result<i32, TraceError> {
        match signal {
            libc::SIGTRAP if self.blocks_trap(tid) => self.keep_trap_pending(tid).map(|()| signal),
            libc::SIGTRAP => self.own_trap(tid),
            other => Ok(other),
        }
    }

    /// Thread `tid` is in the delivery stop of a `SIGTRAP` of the program's own: the
    /// program's action is put back first (the kernel delivers with the action it finds
    /// then). Returns the signal to resume it with: none where the program ignores it (the
    /// call made for it leaves no delivery stop, and an ignored signal does nothing); else
    /// the `SIGTRAP`, delivered from the stop the call left, with its information set back.
    fn own_trap(&mut self, tid: i32) -> Result<i32, TraceError> {
        let Some(noted) = self.trap_action.noted else { return Ok(libc::SIGTRAP) };
        if self.process_of(tid) != self.pid {
            // A child sharing the memory: its actions are its own.
            return Ok(libc::SIGTRAP);
        }
        if noted.handler == SIG_IGN {
            self.put_trap_action_back(tid);
            return Ok(0);
        }
        let info = sys::siginfo(tid)?;
        self.trap_action.noted = put_back(self.pid, tid, &mut self.memory, noted, Call::Stepped);
        sys::set_siginfo(tid, &info)?;
        Ok(libc::SIGTRAP)
    }

    /// The same in a forked child let go untraced (at its first stop, `memory` its own): it
    /// has a copy of this process's action, replaced as this process's was.
    pub(crate) fn put_trap_action_back_in_child(&self, child: i32, memory: &mut RemoteMemory) {
        if let Some(noted) = self.trap_action.noted {
            put_back(child, child, memory, noted, Call::Untrapped);
        }
    }
}

/// Whether process `pid`, held at its `exec` before any trap, ignores `SIGTRAP`: the one
/// action an `execve` keeps, which the traps of the program's start set to the default.
pub(crate) fn ignored_at_exec(pid: i32) -> bool {
    sys::disposition(pid, libc::SIGTRAP).0
}

/// Ignore `SIGTRAP` again in process `pid` (through its stopped thread `tid`), which ignored
/// it at its `exec` ([`ignored_at_exec`]), after the traps of its start set the action to the
/// default: before dprobe's agent is loaded, which takes the action it finds for the
/// program's (a program that raises `SIGTRAP` with it ignored would die of it). Best effort,
/// and only where the action is what a trap leaves of the ignored one.
pub(crate) fn ignore_again(pid: i32, tid: i32, memory: &mut RemoteMemory) {
    let _ = put_back(pid, tid, memory, Action { handler: SIG_IGN, ..Action::default() }, Call::Untrapped);
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
        Ok(now) if noted.replaced_by_a_trap(now) => {
            // What the reset left (the restorer among it) with the handler back.
            let _ = exchange(tid, memory, Some(Action { handler: noted.handler, ..now }), call);
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
        assert!(a.replaced_by_a_trap(Action { handler: SIG_DFL, restorer: 0, ..a }));
        assert!(!a.replaced_by_a_trap(Action { handler: SIG_DFL, flags: 0x0400_0000, ..a }));
        assert!(!a.replaced_by_a_trap(a));
    }

    #[test]
    fn an_action_set_through_the_c_library_is_what_the_kernel_keeps() {
        let mut user = [0u8; USER_SIGACTION_BYTES];
        user[..8].copy_from_slice(&0x401000u64.to_le_bytes());
        // SIGTRAP, SIGKILL and SIGSTOP in the mask; SA_SIGINFO | SA_RESTART and an unknown flag.
        let mask = bit(libc::SIGTRAP) | bit(libc::SIGKILL) | bit(libc::SIGSTOP);
        user[8..16].copy_from_slice(&mask.to_le_bytes());
        user[136..140].copy_from_slice(&(0x1000_0004u32 | 0x0010_0000).to_le_bytes());
        let a = Action::set_through_libc(&user);
        assert_eq!((a.handler, a.flags, a.mask), (0x401000, 0x1400_0004, bit(libc::SIGTRAP)));
    }
}
