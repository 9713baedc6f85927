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
use crate::trap::{self, Dispatch};

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_jump_entry",
    ".type __dprobe_jump_entry,@function",
    "__dprobe_jump_entry:",
    "pushfq",
    "push rax",
    "push rcx",
    "push rdx",
    "push rbx",
    "push rbp",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "cld",
    "sub rsp, 256",
    "movdqu [rsp + 0], xmm0",
    "movdqu [rsp + 16], xmm1",
    "movdqu [rsp + 32], xmm2",
    "movdqu [rsp + 48], xmm3",
    "movdqu [rsp + 64], xmm4",
    "movdqu [rsp + 80], xmm5",
    "movdqu [rsp + 96], xmm6",
    "movdqu [rsp + 112], xmm7",
    "movdqu [rsp + 128], xmm8",
    "movdqu [rsp + 144], xmm9",
    "movdqu [rsp + 160], xmm10",
    "movdqu [rsp + 176], xmm11",
    "movdqu [rsp + 192], xmm12",
    "movdqu [rsp + 208], xmm13",
    "movdqu [rsp + 224], xmm14",
    "movdqu [rsp + 240], xmm15",
    "mov rdi, rsp",
    "mov rbx, rsp",
    "and rsp, -16",
    "call {dispatch}",
    // The frame to restore from: the same one, or one the dispatcher moved (see `redirect`).
    "mov rsp, rax",
    "movdqu xmm0, [rsp + 0]",
    "movdqu xmm1, [rsp + 16]",
    "movdqu xmm2, [rsp + 32]",
    "movdqu xmm3, [rsp + 48]",
    "movdqu xmm4, [rsp + 64]",
    "movdqu xmm5, [rsp + 80]",
    "movdqu xmm6, [rsp + 96]",
    "movdqu xmm7, [rsp + 112]",
    "movdqu xmm8, [rsp + 128]",
    "movdqu xmm9, [rsp + 144]",
    "movdqu xmm10, [rsp + 160]",
    "movdqu xmm11, [rsp + 176]",
    "movdqu xmm12, [rsp + 192]",
    "movdqu xmm13, [rsp + 208]",
    "movdqu xmm14, [rsp + 224]",
    "movdqu xmm15, [rsp + 240]",
    "add rsp, 256",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rbp",
    "pop rbx",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "popfq",
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
    xmm: [[u64; 2]; 16],
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rbx: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    rflags: u64,
    /// Where the stub returns: into the detour, after its call.
    ret: u64,
    /// The slot the detour kept below the red zone: the RIP a redirect jumps to.
    redirect: u64,
}

/// From the frame's start to the stack pointer at the probe.
const FRAME_TO_RSP: u64 = std::mem::size_of::<JumpFrame>() as u64 - 8 + DETOUR_STACK_SKIP;

impl JumpFrame {
    fn regs(&self, rip: u64, rsp: u64) -> Regs {
        let mut xmm = [0u128; 16];
        for (x, h) in xmm.iter_mut().zip(self.xmm) {
            *x = u128::from(h[0]) | (u128::from(h[1]) << 64);
        }
        Regs {
            rax: self.rax,
            rcx: self.rcx,
            rdx: self.rdx,
            rbx: self.rbx,
            rsp,
            rbp: self.rbp,
            rsi: self.rsi,
            rdi: self.rdi,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip,
            rflags: self.rflags,
            xmm,
        }
    }

    fn set_regs(&mut self, r: &Regs) {
        for (h, x) in self.xmm.iter_mut().zip(r.xmm) {
            *h = [x as u64, (x >> 64) as u64];
        }
        (self.rax, self.rcx, self.rdx, self.rbx, self.rbp, self.rsi, self.rdi) =
            (r.rax, r.rcx, r.rdx, r.rbx, r.rbp, r.rsi, r.rdi);
        (self.r8, self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15) =
            (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15);
        self.rflags = r.rflags;
    }
}

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
    let mut regs = unsafe { (*frame).regs(site_addr, rsp) };
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
        unsafe { (*frame).set_regs(&regs) };
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
        (*moved).set_regs(regs);
        (*moved).ret = detour.offset(DETOUR_REDIRECT).0;
        (*moved).redirect = target;
    }
    moved
}
