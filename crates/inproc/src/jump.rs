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
//! Like the trap path, nothing here allocates or locks, and registers are copied on the stack.
//!
//! # Finding the site without a lookup
//!
//! A detour's first word points to its [`JumpSite`], which the registrar keeps pointing at the
//! site as last published (its probes). The dispatcher reads that pointer instead of searching
//! the table, so a hit costs the same with one probe or ten thousand, and it protects the read
//! without an atomic read-modify-write: it bumps its thread's `jump_reading` counter to odd
//! with a plain store, reads, and bumps it back to even. A registrar that replaces the pointer
//! keeps the old site alive until [`grace`]: `membarrier` makes every thread execute a full
//! barrier (so a reader either had published its odd counter, or reads the new pointer), then
//! it waits until each odd counter it saw has moved on (user-space RCU's `membarrier`
//! flavour). Without `membarrier`, readers pay a fence instead. A thread without a state entry
//! (the table is full) falls back to the table's RCU read.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, Ordering::*};

use dprobe_arch::{Addr, Prepared, Regs, DETOUR_REDIRECT, DETOUR_RETURN, DETOUR_STACK_SKIP, DETOUR_WINDOW};
use dprobe_core::{PreOutcome, Site, TrapKind};

use crate::engine::Engine;
use crate::saved::{restore_registers, save_registers, SavedRegs};
use crate::sys;
use crate::thread_state::{self, ThreadState};
use crate::trap::{self, Dispatch};

/// A jump-optimized site as its detour's dispatcher reads it. One per detour, never freed.
pub(crate) struct JumpSite {
    /// The probe address.
    pub(crate) addr: Addr,
    /// The site as last published; the registrar keeps it alive (see [`grace`]).
    pub(crate) site: AtomicPtr<Site<Prepared>>,
}

/// Whether readers must fence (no `membarrier`): set before the first jump goes live.
static READERS_FENCE: AtomicBool = AtomicBool::new(true);

/// Decide, before a jump goes live, whether its readers must fence: only when the process
/// cannot use `membarrier`.
pub(crate) fn prepare_readers() {
    READERS_FENCE.store(!sys::sync_cores(), SeqCst);
}

/// Wait until no thread can still read a site pointer replaced before this call.
pub(crate) fn grace() {
    let barrier = sys::sync_cores();
    READERS_FENCE.store(!barrier, Relaxed);
    if !barrier {
        fence(SeqCst);
    }
    let own = thread_state::existing().map(|s| s as *const ThreadState);
    let mut busy = Vec::new();
    thread_state::for_each(|s| {
        let seen = s.jump_reading.load(Acquire);
        if seen % 2 == 1 && Some(s as *const ThreadState) != own {
            busy.push((s as *const ThreadState, seen));
        }
    });
    for (s, seen) in busy {
        // SAFETY: entries of the state table are never unmapped.
        let s = unsafe { &*s };
        while s.jump_reading.load(Acquire) == seen {
            std::thread::yield_now();
        }
    }
}

/// Marks the calling thread as reading a site pointer (see the module's comment).
struct Reading<'a>(&'a ThreadState);

impl<'a> Reading<'a> {
    fn enter(s: &'a ThreadState) -> Self {
        let depth = s.jump_depth.get();
        s.jump_depth.set(depth + 1);
        if depth == 0 {
            // Only this thread writes its counter: a load and a store, no locked instruction.
            s.jump_reading.store(s.jump_reading.load(Relaxed) + 1, Relaxed);
        }
        if READERS_FENCE.load(Relaxed) {
            fence(SeqCst);
        } else {
            compiler_fence(SeqCst);
        }
        Reading(s)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        compiler_fence(SeqCst);
        let depth = self.0.jump_depth.get() - 1;
        if depth == 0 {
            self.0.jump_reading.store(self.0.jump_reading.load(Relaxed) + 1, Release);
        }
        self.0.jump_depth.set(depth);
    }
}

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
    let state = thread_state::current();
    let _hit_path = trap::HitPath::with(state);
    let detour = Addr(
        // SAFETY: the stub passes the frame it just pushed on this thread's stack.
        unsafe { (*frame).ret } - DETOUR_RETURN,
    );
    // SAFETY: the stub is only called by a detour, whose first 8 bytes are the address of
    // its `JumpSite`; detours and their `JumpSite`s are never freed.
    let jump_site = unsafe { &*(std::ptr::read(detour.0 as *const u64) as *const JumpSite) };
    let site_addr = jump_site.addr.0;
    let rsp = frame as u64 + FRAME_TO_RSP;
    // SAFETY: as above: the frame is ours until this function returns.
    let mut regs = unsafe { (*frame).saved.regs(site_addr, rsp) };
    let skip = match state {
        Some(s) => {
            let _reading = Reading::enter(s);
            let site = jump_site.site.load(Acquire);
            // SAFETY: a non-null pointer is a published site, kept alive by the registrar
            // until a grace period has passed, which waits for `_reading`.
            !site.is_null() && run_handlers(unsafe { &*site }, &mut regs, state)
        }
        None => Engine::get().is_some_and(|engine| {
            engine.table.lookup(site_addr, |found| match found {
                Some((site, TrapKind::Entry)) => run_handlers(site, &mut regs, None),
                _ => false,
            })
        }),
    };
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
fn run_handlers(site: &Site<Prepared>, regs: &mut Regs, state: Option<&'static ThreadState>) -> bool {
    trap::dispatch_entry_in(state, site, regs, None, |_, d| matches!(d, Dispatch::Ran(PreOutcome::Skip)))
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
