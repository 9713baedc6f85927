//! The jump path: hits of jump-optimized probes, without a trap.
//!
//! A probe's `jmp rel32` leads to its detour (see `dprobe_arch::detour_code`), which calls
//! [`__dprobe_jump_entry`] below. The stub saves the flags, the general registers and
//! `xmm0`-`xmm15` (handlers see and may change them all, as on the trap path; Rust code may
//! use any `xmm` register), clears the direction flag, and calls [`jump_dispatch`] on an
//! aligned stack. The dispatcher finds the site from the detour's address, runs the same
//! entry dispatch as the trap path (`trap::dispatch_entry`: pre-handlers under the fault
//! guard, a hit inside a handler counted as missed), and tells the stub from which frame to
//! restore. The stub restores and returns into the detour, which runs the relocated window
//! and jumps back.
//!
//! Like the trap path, nothing here allocates or locks: the site is found by an RCU read of
//! the table, registers are copied on the stack.

use dprobe_arch::{Addr, Prepared, Regs, DETOUR_REDIRECT, DETOUR_RETURN, DETOUR_STACK_SKIP, DETOUR_WINDOW};
use dprobe_core::{PreOutcome, Site, TrapKind};

use crate::engine::Engine;
use crate::saved::{restore_registers, save_registers, SavedRegs};
use crate::trap::{self, Dispatch};

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_jump_entry",
    ".type __dprobe_jump_entry,@function",
    "__dprobe_jump_entry:",
    save_registers!(),
    "mov rdi, rsp",
    "mov rbx, rsp",
    "and rsp, -16",
    "call {dispatch}",
    // The frame to restore from: the same one, or one the dispatcher moved (see `redirect`).
    "mov rsp, rax",
    restore_registers!(),
    "ret",
    ".size __dprobe_jump_entry, . - __dprobe_jump_entry",
    dispatch = sym jump_dispatch,
);

extern "C" {
    fn __dprobe_jump_entry();
}

/// The stub every detour calls.
pub(crate) fn entry_stub() -> Addr {
    Addr(__dprobe_jump_entry as *const () as u64)
}

/// What the stub pushed, lowest address first.
#[repr(C)]
#[derive(Clone, Copy)]
struct JumpFrame {
    saved: SavedRegs,
    /// Where the stub returns: into the detour, after its call.
    ret: u64,
    /// The slot the detour kept below the red zone: the RIP a redirect jumps to.
    redirect: u64,
}

/// From the frame's start to the stack pointer at the probe.
const FRAME_TO_RSP: u64 = std::mem::size_of::<JumpFrame>() as u64 - 8 + DETOUR_STACK_SKIP;

/// Called by the stub with the frame it pushed; returns the frame to restore from.
extern "C" fn jump_dispatch(frame: *mut JumpFrame) -> *mut JumpFrame {
    let _hit_path = trap::HitPath::enter();
    let detour = Addr(
        // SAFETY: the stub passes the frame it just pushed on this thread's stack.
        unsafe { (*frame).ret } - DETOUR_RETURN,
    );
    // SAFETY: the stub is only called by a detour, whose first 8 bytes are its probe's
    // address; detours are never unmapped.
    let site_addr = unsafe { std::ptr::read(detour.0 as *const u64) };
    let rsp = frame as u64 + FRAME_TO_RSP;
    // SAFETY: as above: the frame is ours until this function returns.
    let mut regs = unsafe { (*frame).saved.regs(site_addr, rsp) };
    let skip = Engine::get().is_some_and(|engine| {
        engine.table.lookup(site_addr, |found| match found {
            Some((site, TrapKind::Entry)) => run_handlers(site, &mut regs),
            _ => false,
        })
    });
    let window = detour.offset(DETOUR_WINDOW).0;
    let target = if skip { regs.rip } else { window };
    if target == window && regs.rsp == rsp {
        // SAFETY: as above.
        unsafe { (*frame).saved.set(&regs, !0) };
        return frame;
    }
    // SAFETY: as above; `redirect` checks where the moved frame may go.
    unsafe { redirect(frame, &regs, target, detour, rsp) }
}

/// The trap path's entry dispatch; whether a pre-handler moved RIP (skip the window).
fn run_handlers(site: &Site<Prepared>, regs: &mut Regs) -> bool {
    trap::dispatch_entry(site, regs, None, |_, d| matches!(d, Dispatch::Ran(PreOutcome::Skip)))
}

/// Continue at `target` with the stack pointer a handler chose: move the frame so that it
/// ends just below the new stack pointer's red zone, with `target` in its redirect slot, and
/// return into the detour's `ret 128`.
///
/// A frame can only move up (a handler that pops, e.g. to return from the function): below the
/// current frame is this dispatcher's own stack. A handler that lowers the stack pointer on a
/// jump-optimized probe sees its RIP change honoured and its stack pointer change ignored.
///
/// # Safety
/// `frame` is the stub's frame and `rsp` the stack pointer at the probe.
unsafe fn redirect(frame: *mut JumpFrame, regs: &Regs, target: u64, detour: Addr, rsp: u64) -> *mut JumpFrame {
    let new_rsp = if regs.rsp >= rsp { regs.rsp } else { rsp };
    let moved = (new_rsp - FRAME_TO_RSP) as *mut JumpFrame;
    // SAFETY: `moved` is at or above `frame`, between it and the stack pointer the handler
    // chose: stack below the program's stack pointer, which nothing else uses. The copy may
    // overlap the frame (`copy` is a memmove).
    unsafe {
        std::ptr::copy(frame, moved, 1);
        (*moved).saved.set(regs, !0);
        (*moved).ret = detour.offset(DETOUR_REDIRECT).0;
        (*moved).redirect = target;
    }
    moved
}
