//! The jump path: hits of jump-optimized probes, without a trap.
//!
//! A probe's `jmp rel32` leads to its detour (see `dprobe_arch::detour_code`), which calls
//! `__dprobe_jump_entry` below. The stub saves the flags, the general registers and
//! `xmm0`-`xmm15` (handlers see and may change them all, as on the trap path; Rust code may
//! use any `xmm` register), clears the direction flag, and calls [`jump_dispatch`] on an
//! aligned stack. Inside a function on a CPU with AVX the detour calls the `_full` stub
//! instead, which also keeps the whole extended state (`XSAVE`, see [`full_stub!`]): the
//! kernel's signal frame keeps it on the trap path, and a handler's library calls may clobber
//! the upper halves the interrupted code still uses. At a function's entry only the
//! arguments are live, in `xmm` registers, and the cheaper stub keeps them (measured in
//! BENCHMARKS.md).
//!
//! A probe with a post-handler gets a detour with a post block after the probed instruction,
//! which calls a post stub: [`post_dispatch`] runs the post-handlers there, as the trap path
//! does after its single step, with no trap. The dispatcher finds the site from the detour's address, runs the same
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

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU64, Ordering::*};

use dprobe_arch::{
    Addr, Prepared, Regs, VectorState, DETOUR_REDIRECT, DETOUR_RETURN, DETOUR_STACK_SKIP, DETOUR_WINDOW,
    POST_DETOUR_BACK, POST_NEXT_BACK,
};
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

/// The bytes of an `XSAVE` area for the enabled state components (from CPUID), 0 until
/// [`xsave_ready`] found them; read by the full-state stubs.
static XSAVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Whether the full-state stubs use `XSAVEC` (compacted, skips components in their initial
/// state) rather than `XSAVE`.
static XSAVE_COMPACT: AtomicBool = AtomicBool::new(false);

/// A stub that saves the general registers, the flags and `xmm0`-`xmm15`, calls `dispatch`
/// with the frame on an aligned stack, and restores from the frame it returns.
macro_rules! xmm_stub {
    ($name:literal, $dispatch:path) => {
        std::arch::global_asm!(
            ".text",
            concat!(".globl ", $name),
            concat!(".type ", $name, ",@function"),
            concat!($name, ":"),
            save_registers!(),
            "mov rdi, rsp",
            "mov rbx, rsp",
            "and rsp, -16",
            "call {dispatch}",
            // The frame to restore from: the same one, or one the dispatcher moved (see
            // `redirect`).
            "mov rsp, rax",
            restore_registers!(),
            "ret",
            concat!(".size ", $name, ", . - ", $name),
            dispatch = sym $dispatch,
        );
    };
}

/// [`xmm_stub!`], plus the whole extended state (`ymm`/`zmm` upper halves, `zmm16`-`zmm31`,
/// mask registers, x87/MXCSR) saved with `XSAVE`/`XSAVEC` into a 64-byte aligned area below
/// the frame, and restored with `XRSTOR` before the frame (whose `xmm0`-`xmm15`, which a
/// handler may have changed, are then written over the restored low halves: the legacy SSE
/// moves leave the upper halves as `XRSTOR` put them). The area's header is zeroed first, as
/// `XRSTOR` requires. `rbx` and `r12` (saved in the frame) keep the frame and the area across
/// the call.
macro_rules! full_stub {
    ($name:literal, $dispatch:path) => {
        std::arch::global_asm!(
            ".text",
            concat!(".globl ", $name),
            concat!(".type ", $name, ",@function"),
            concat!($name, ":"),
            save_registers!(),
            "mov rbx, rsp",
            "sub rsp, qword ptr [rip + {bytes}]",
            "and rsp, -64",
            "mov r12, rsp",
            "xor eax, eax",
            "mov qword ptr [r12 + 512], rax",
            "mov qword ptr [r12 + 520], rax",
            "mov qword ptr [r12 + 528], rax",
            "mov qword ptr [r12 + 536], rax",
            "mov qword ptr [r12 + 544], rax",
            "mov qword ptr [r12 + 552], rax",
            "mov qword ptr [r12 + 560], rax",
            "mov qword ptr [r12 + 568], rax",
            "mov eax, -1",
            "mov edx, -1",
            "cmp byte ptr [rip + {compact}], 0",
            "je 2f",
            "xsavec64 [r12]",
            "jmp 3f",
            "2:",
            "xsave64 [r12]",
            "3:",
            "mov rdi, rbx",
            "call {dispatch}",
            "mov rbx, rax",
            "mov eax, -1",
            "mov edx, -1",
            "xrstor64 [r12]",
            "mov rsp, rbx",
            restore_registers!(),
            "ret",
            concat!(".size ", $name, ", . - ", $name),
            dispatch = sym $dispatch,
            bytes = sym XSAVE_BYTES,
            compact = sym XSAVE_COMPACT,
        );
    };
}

xmm_stub!("__dprobe_jump_entry", jump_dispatch);
xmm_stub!("__dprobe_jump_post", post_dispatch);
full_stub!("__dprobe_jump_entry_full", jump_dispatch);
full_stub!("__dprobe_jump_post_full", post_dispatch);

extern "C" {
    fn __dprobe_jump_entry();
    fn __dprobe_jump_post();
    fn __dprobe_jump_entry_full();
    fn __dprobe_jump_post_full();
}

/// The stubs a detour calls: at its entry, and after the probed instruction (post-handlers),
/// for the vector state it keeps.
pub(crate) fn stubs(state: VectorState) -> (Addr, Addr) {
    let at = |f: unsafe extern "C" fn()| Addr(f as *const () as u64);
    match state {
        VectorState::Xmm => (at(__dprobe_jump_entry), at(__dprobe_jump_post)),
        VectorState::Full => (at(__dprobe_jump_entry_full), at(__dprobe_jump_post_full)),
    }
}

/// Make the full-state stubs usable: the size of the area `XSAVE` (or `XSAVEC`) writes for
/// the state components the kernel enabled, from CPUID leaf 0xD. Why not, when they cannot be.
pub(crate) fn xsave_ready() -> Result<(), String> {
    use std::arch::x86_64::__cpuid_count;
    if XSAVE_BYTES.load(Relaxed) != 0 {
        return Ok(());
    }
    // CPUID is available on every x86-64 CPU.
    let leaf1 = __cpuid_count(1, 0);
    if leaf1.ecx & (1 << 27) == 0 {
        return Err("the kernel has not enabled XSAVE (CPUID.1:ECX.OSXSAVE is clear)".into());
    }
    // Leaf 0xD exists wherever OSXSAVE is set.
    let (main, sub1) = (__cpuid_count(0xd, 0), __cpuid_count(0xd, 1));
    // Leaf 0xD sub-leaf 1: EAX bit 1 is XSAVEC, EBX the compacted size of the enabled
    // components; sub-leaf 0: EBX the standard-format size for those enabled in XCR0.
    let compact = sub1.eax & 2 != 0 && sub1.ebx != 0;
    let bytes = if compact { sub1.ebx } else { main.ebx };
    if bytes < 576 {
        return Err(format!("CPUID reports an XSAVE area of {bytes} bytes"));
    }
    XSAVE_COMPACT.store(compact, Relaxed);
    // Room to align the area down to 64 bytes.
    XSAVE_BYTES.store(u64::from(bytes) + 64, SeqCst);
    Ok(())
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

/// Called by a post stub (the detour's post block, after the probed instruction ran) with the
/// frame it pushed; returns the frame to restore from. Runs the post-handlers as the trap path
/// does after its single step, unless the entry ran none (a hit inside a handler, or
/// dprobe's own work: the entry counted it already).
extern "C" fn post_dispatch(frame: *mut JumpFrame) -> *mut JumpFrame {
    let state = thread_state::current();
    let _hit_path = trap::HitPath::with(state);
    // SAFETY: the stub passes the frame it just pushed on this thread's stack.
    let ret = unsafe { (*frame).ret };
    // SAFETY: a post stub is only called by a detour's post block, which holds the detour's
    // address and the original address after the probed instruction at these distances
    // below the call's return address (`dprobe_arch::detour_code_with_post`).
    let (detour, next) = unsafe {
        (
            Addr(std::ptr::read((ret - POST_DETOUR_BACK) as *const u64)),
            std::ptr::read((ret - POST_NEXT_BACK) as *const u64),
        )
    };
    let Some(state) = state else { return frame };
    // SAFETY: as in `jump_dispatch`: a detour's first word is its `JumpSite`, never freed.
    let jump_site = unsafe { &*(std::ptr::read(detour.0 as *const u64) as *const JumpSite) };
    let rsp = frame as u64 + FRAME_TO_RSP;
    // SAFETY: as above: the frame is ours until this function returns.
    let mut regs = unsafe { (*frame).saved.regs(next, rsp) };
    let ran = {
        let _reading = Reading::enter(state);
        let site = jump_site.site.load(Acquire);
        // SAFETY: as in `jump_dispatch`.
        !site.is_null() && trap::dispatch_post_in(state, unsafe { &*site }, &mut regs)
    };
    if !ran {
        return frame;
    }
    // The rest of the relocated window continues after the post block's `lea rsp` (8 bytes).
    let rest = ret + 8;
    let target = if regs.rip == next { rest } else { regs.rip };
    if target == rest && regs.rsp == rsp {
        // SAFETY: as above.
        unsafe { (*frame).saved.set(&regs, !0) };
        return frame;
    }
    // SAFETY: as above.
    unsafe { redirect(frame, &regs, target, detour, rsp) }
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
