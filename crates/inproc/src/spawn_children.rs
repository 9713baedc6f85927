//! Keeping `SIGTRAP` handled in the children `posix_spawn` and `system` start.
//!
//! The C library starts those children with `clone(CLONE_VM | CLONE_VFORK)`: the child runs in
//! the program's memory, on a stack of its own, until its `exec`. Because a handler of the
//! program's would run there on the parent's data, the child first resets every signal that has
//! a handler to the default action, dprobe's `SIGTRAP` handler among them, and it runs with
//! every signal blocked until just before its `exec` (its file actions, `setsid` and the like
//! run that way). A probe on `int3` that the child hits then (on `dup2`, `chdir`, `execve`...)
//! raises a forced `SIGTRAP` that is blocked or has the default action: the child is killed
//! before its `exec`, and the program sees its command die of `SIGTRAP`.
//!
//! A probe on the C library's internal `__libc_sigaction` (the function `sigaction` hands its
//! calls to, which the child calls for each signal) keeps the trap alive there: in a process
//! that shares the program's memory but is not the program (its process ID differs from the
//! one noted at the last `fork`), a call that sets `SIGTRAP` to the default action (with no
//! old action asked for, as the child's) returns 0 without doing so, and unblocks `SIGTRAP` in
//! that child. dprobe's handler then handles the child's hits, in the program's memory as the
//! probes expect. The child's `exec` resets every handled signal to the default action, so the
//! new program gets the default action all the same; its mask is the one the child sets just
//! before its `exec`.
//!
//! `__libc_sigaction` has no dynamic symbol: it is found as the target of `sigaction`'s tail
//! jump. The probe must be jump-optimized (an `int3` there would be hit by the child with every
//! signal blocked, and kill it): where it is not, or where `sigaction` has no such jump, there
//! is no probe and children are as before.
//!
//! Not covered: a probe on `int3` in what the child runs before that call (the C library's
//! `sigprocmask`, its first call) still kills it. Taken for such a child too, and so keeping
//! `SIGTRAP` handled where it asks for the default action this way: a child that shares the
//! program's memory and is not a thread (a `vfork` child, one of a raw `clone`), and a child of
//! a `fork` that runs no `pthread_atfork` handler (the raw system call, `_Fork`).

use dprobe_arch::{find_exits, Addr, CodePart, ExitKind, NoMemory, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::mask_guard::TRAP;
use crate::probe::{code_in_file, register, Probe};
use crate::{lent_threads, sys};

/// The probe on `__libc_sigaction`, if it is found and jump-optimized (see the module's
/// comment); `Ok(None)` where it is not.
pub(crate) fn keep_trap_in_children() -> Result<Option<Probe>, ProbeError> {
    let Some(asked) = probe()? else { return Ok(None) };
    Ok(kept(register(asked)?))
}

/// The probe [`keep_trap_in_children`] places, for a batch of its caller's; `Ok(None)` where
/// `sigaction` has no tail jump to probe.
pub(crate) fn probe() -> Result<Option<Kprobe>, ProbeError> {
    lent_threads::note_program();
    Ok(sigaction_callee()?.map(|inner| Kprobe::addr(inner).pre(child_keeps_trap).after_others()))
}

/// The probe [`probe`] gave, placed: kept only as a jump.
pub(crate) fn kept(probe: Probe) -> Option<Probe> {
    probe.optimized().is_ok().then_some(probe)
}

/// Where the C library's `sigaction` hands its calls on to: the target of its only tail jump,
/// read from the library's file (in memory, its first bytes may be a probe's jump already:
/// `handler_masks.rs` places one).
fn sigaction_callee() -> Result<Option<Addr>, ProbeError> {
    Ok(code_in_file("libc:sigaction")?.and_then(|(start, code)| only_tail_jump(start, &code)))
}

/// The target of the one unconditional tail jump of the function `code` at `start`, if it has
/// exactly one.
fn only_tail_jump(start: Addr, code: &[u8]) -> Option<Addr> {
    let exits = find_exits(&[CodePart { start, code }], &mut NoMemory).ok()?;
    let mut jumps = exits.sites.iter().filter_map(|site| match site.kind {
        ExitKind::TailJump { target } => Some(target),
        _ => None,
    });
    let first = jumps.next()?;
    jumps.next().is_none().then_some(first)
}

/// `__libc_sigaction(sig, act, old)`'s first instruction (see the module's comment).
fn child_keeps_trap(regs: &mut Regs) -> PreAction {
    let (sig, act, old) = (regs.rdi as i32, regs.rsi, regs.rdx);
    if sig != libc::SIGTRAP || act == 0 || old != 0 || sys::own_pid() == lent_threads::program() {
        return PreAction::Continue;
    }
    let (mut handler, mut return_address) = ([0u8; 8], [0u8; 8]);
    if sys::read_memory(Addr(act), &mut handler).is_err()
        || u64::from_le_bytes(handler) != libc::SIG_DFL as u64
        || sys::read_memory(Addr(regs.rsp), &mut return_address).is_err()
    {
        return PreAction::Continue;
    }
    let set = TRAP;
    // SAFETY: rt_sigprocmask reads one 8-byte set; it changes the calling thread's mask only
    // (the child's: it shares no signal state with the program).
    unsafe {
        sys::raw_syscall6(libc::SYS_rt_sigprocmask, [libc::SIG_UNBLOCK as u64, &set as *const u64 as u64, 0, 8, 0, 0])
    };
    // Return 0 to the caller, the action unchanged (as at an exit, for return probes).
    regs.rax = 0;
    crate::exits::returned_without_exit(regs);
    regs.rip = u64::from_le_bytes(return_address);
    regs.rsp += 8;
    PreAction::SkipInstruction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callee_is_the_target_of_the_only_tail_jump() {
        // glibc 2.36's `sigaction`: two range checks that go to an `EINVAL` return, and a tail
        // jump to `__libc_sigaction`.
        let code = [
            0x8d, 0x47, 0xff, // lea -0x1(%rdi),%eax
            0x83, 0xf8, 0x3f, // cmp $0x3f,%eax
            0x77, 0x10, // ja +0x10
            0x8d, 0x47, 0xe0, // lea -0x20(%rdi),%eax
            0x83, 0xf8, 0x01, // cmp $1,%eax
            0x76, 0x08, // jbe +8
            0xe9, 0x3b, 0x00, 0x00, 0x00, // jmp +0x3b
            0x0f, 0x1f, 0x00, // nopl (%rax)
            0xb8, 0xff, 0xff, 0xff, 0xff, // mov $-1,%eax
            0xc3, // ret
        ];
        assert_eq!(only_tail_jump(Addr(0x3c010), &code), Some(Addr(0x3c060)));
    }

    #[test]
    fn no_callee_where_there_are_two_tail_jumps_or_none() {
        let two = [0x85, 0xff, 0x74, 0x05, 0xe9, 0x00, 0x10, 0x00, 0x00, 0xe9, 0x00, 0x20, 0x00, 0x00];
        assert_eq!(only_tail_jump(Addr(0x1000), &two), None);
        let none = [0x31, 0xc0, 0xc3];
        assert_eq!(only_tail_jump(Addr(0x1000), &none), None);
    }
}
