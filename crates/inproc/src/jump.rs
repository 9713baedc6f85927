//! The jump path: hits of jump-optimized probes, without a trap.
//!
//! A probe's `jmp rel32` leads to its detour (see `dprobe_arch::detour_code`), which calls an
//! entry stub (`jump_stub.rs`). The stub stores the flags, the general registers and
//! `xmm0`-`xmm15` (handlers see and may change them all, as on the trap path; Rust code may
//! use any `xmm` register) straight into a `Regs` on the stack, and calls [`jump_dispatch`]
//! with it: the handlers read and change that frame itself. Inside a function on a CPU with
//! AVX the detour calls a whole-state stub instead, which also keeps the extended state
//! (`XSAVE`): the kernel's signal frame keeps it on the trap path, and a handler's library
//! calls may clobber the upper halves the interrupted code still uses. At a function's entry
//! only the arguments are live, in `xmm` registers, and the cheaper stub keeps them (measured
//! in BENCHMARKS.md).
//!
//! A probe with a post-handler gets a detour with a post block after the probed instruction,
//! which calls a post stub: [`post_dispatch`] runs the post-handlers there, as the trap path
//! does after its single step, with no trap. The dispatcher finds the site from the detour's
//! address, runs the same entry dispatch as the trap path (`trap::dispatch_entry`:
//! pre-handlers under the fault guard, a hit inside a handler counted as missed), and tells the
//! stub where to continue ([`resume`]). The stub restores and returns into the detour, which
//! runs the relocated window and jumps back.
//!
//! Like the trap path, nothing here allocates or locks, and registers stay on the stack. On a
//! program's alternate signal stack the dispatch moves to a stack of dprobe's, as the trap
//! path does (`hit_stack.rs`).
//!
//! # Finding the site without a lookup
//!
//! A detour's first word points to its [`JumpSite`], which the registrar keeps pointing at the
//! site as last published (its probes). The dispatcher reads that pointer instead of searching
//! the table, so a hit costs the same with one probe or ten thousand, and it protects the read
//! without an atomic read-modify-write: it marks its thread's `jump_reading` word as inside a
//! read section (a nesting depth, and which outermost section) with a plain store, reads, and
//! marks it out again. A registrar that replaces the pointer keeps the old site alive until
//! [`grace`]: `membarrier` makes every thread execute a full barrier (so a reader either had
//! published its section, or reads the new pointer), then it waits until each section it saw
//! has ended (user-space RCU's `membarrier` flavour, whose reader word this is). Without `membarrier`, readers pay a fence instead. A thread without a state entry
//! (the table is full) falls back to the table's RCU read.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, Ordering::*};

use dprobe_arch::{
    Addr, Prepared, Regs, DETOUR_REDIRECT, DETOUR_RETURN, DETOUR_STACK_SKIP, DETOUR_WINDOW, POST_DETOUR_BACK,
    POST_NEXT_BACK,
};
use dprobe_core::{PreOutcome, Site, TrapKind};
use dprobe_rcu::Rcu;

use crate::abandoned;
use crate::engine::Engine;
pub(crate) use crate::jump_stub::{stubs, xsave_ready};
use crate::thread_state::{self, ThreadState};
use crate::trap::{self, Dispatch};
use crate::{hit_stack, signals_released, sys};

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

/// Wait until no thread can still read a site pointer replaced before this call (or a cell
/// read with [`read_published`]).
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
        if depth(seen) > 0 && Some(s as *const ThreadState) != own {
            busy.push((s as *const ThreadState, seen));
        }
    });
    for (s, seen) in busy {
        // SAFETY: entries of the state table are never unmapped.
        let s = unsafe { &*s };
        // Inside the same outermost section as when seen: still reading.
        while same_section(s.jump_reading.load(Acquire), seen) {
            std::thread::yield_now();
        }
    }
}

/// The nesting depth of a thread's read section word (`ThreadState::jump_reading`).
fn depth(word: u64) -> u32 {
    word as u32
}

/// Whether `now` is inside the same outermost section as `seen`, which was inside one.
fn same_section(now: u64, seen: u64) -> bool {
    depth(now) > 0 && now >> 32 == seen >> 32
}

/// Read `cell`, made with `Rcu::with_grace(_, grace)`, from a hit of thread `state`: inside a
/// detour's read section (the jump path, handlers included) with a load, since [`grace`]
/// waits for that section; elsewhere (the trap path, a thread without a state entry) with the
/// cell's own announced read.
pub(crate) fn read_published<T, R>(state: Option<&ThreadState>, cell: &Rcu<T>, f: impl FnOnce(&T) -> R) -> R {
    match state {
        // SAFETY: a depth above zero in the section word is a `Reading` of this thread alive
        // around this call, which `grace` waits for (a signal handler nested in the thread
        // finds the word as the interrupted code left it, or as it was before), and the
        // cell's writers wait for `grace`.
        Some(s) if depth(s.jump_reading.load(Relaxed)) > 0 => unsafe { cell.read_in_section(f) },
        _ => cell.read(f),
    }
}

/// Marks the calling thread as reading a site pointer (see the module's comment).
///
/// The section is one word, changed with a load and a store by the thread alone: a signal
/// handler nested between the two runs its own sections to their end and leaves the word as
/// it found it, or starts a section of its own that ends before the interrupted store, which
/// a waiting `grace` then sees as a new section (read after the pointer it waits about was
/// replaced). Two words (a depth and a counter) had a moment where a nested read saw a depth
/// above zero that no grace period waited for.
struct Reading<'a>(&'a ThreadState);

impl<'a> Reading<'a> {
    fn enter(s: &'a ThreadState) -> Self {
        let word = s.jump_reading.load(Relaxed);
        // Only this thread writes its word: a load and a store, no locked instruction.
        let next = if depth(word) == 0 { ((word >> 32) + 1) << 32 | 1 } else { word + 1 };
        s.jump_reading.store(next, Relaxed);
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
        let word = self.0.jump_reading.load(Relaxed);
        self.0.jump_reading.store(word - 1, Release);
    }
}

/// From the stack pointer at a stub's entry (its return address into the detour) to the
/// stack pointer at the probe: the return address, then the slot and red zone the detour skips.
const STUB_TO_RSP: u64 = 8 + DETOUR_STACK_SKIP;

/// The site a detour leads from.
///
/// # Safety
/// `detour` is a detour's address: its first 8 bytes are the address of its `JumpSite`.
unsafe fn jump_site_of(detour: Addr) -> &'static JumpSite {
    // SAFETY: per the contract; detours and their `JumpSite`s are never freed.
    unsafe { &*(std::ptr::read(detour.0 as *const u64) as *const JumpSite) }
}

/// Called by an entry stub (`jump_stub.rs`) with the registers it stored and its stack pointer
/// at entry, `entry_sp`, which holds the return address into the detour. Handlers get `regs`
/// itself; [`resume`] tells the stub where to continue.
pub(crate) extern "C" fn jump_dispatch(regs: *mut Regs, entry_sp: u64) {
    // SAFETY: the stub passes a frame it owns on this thread's stack (16-byte aligned, every
    // field written but `rsp` and `rip`, set here), ours until this function returns, and its
    // stack pointer at entry, where the detour's call left its return address.
    let (regs, ret) = unsafe { (&mut *regs, std::ptr::read(entry_sp as *const u64)) };
    let detour = Addr(ret - DETOUR_RETURN);
    // SAFETY: the stub is only called by a detour, from its head.
    let jump_site = unsafe { jump_site_of(detour) };
    let rsp = entry_sp + STUB_TO_RSP;
    (regs.rsp, regs.rip) = (rsp, jump_site.addr.0);
    let state = thread_state::current();
    if let Some(s) = state {
        abandoned::forget_left_hit_path(s, rsp);
    }
    let (skip, held) = match state {
        // On the program's alternate stack, the hit path moves to a stack of dprobe's.
        Some(s) => hit_stack::off_alternate_stack_holding(s, rsp, || {
            let _hit_path = trap::HitPath::with(state);
            let _reading = Reading::enter(s);
            let site = jump_site.site.load(Acquire);
            // SAFETY: a non-null pointer is a published site, kept alive by the registrar
            // until a grace period has passed, which waits for `_reading`.
            !site.is_null() && run_handlers(unsafe { &*site }, regs, state)
        }),
        None => {
            let skip = Engine::get().is_some_and(|engine| {
                engine.table.lookup(jump_site.addr.0, |found| match found {
                    Some((site, TrapKind::Entry)) => run_handlers(site, regs, None),
                    _ => false,
                })
            });
            (skip, None)
        }
    };
    let window = detour.offset(DETOUR_WINDOW).0;
    let target = if skip { regs.rip } else { window };
    // SAFETY: `entry_sp` is the stub's, as above.
    unsafe { resume(regs, entry_sp, detour, target, window, rsp, held) };
}

/// The trap path's entry dispatch; whether a pre-handler moved RIP (skip the window).
fn run_handlers(site: &Site<Prepared>, regs: &mut Regs, state: Option<&'static ThreadState>) -> bool {
    trap::dispatch_entry_in(state, site, regs, None, |_, d| matches!(d, Dispatch::Ran(PreOutcome::Skip)))
}

/// Called by a post stub (the detour's post block, after the probed instruction ran), as
/// [`jump_dispatch`] is. Runs the post-handlers as the trap path does after its single step,
/// unless the entry ran none (a hit inside a handler, or dprobe's own work: the entry counted
/// it already).
pub(crate) extern "C" fn post_dispatch(regs: *mut Regs, entry_sp: u64) {
    // SAFETY: as in `jump_dispatch`.
    let (regs, ret) = unsafe { (&mut *regs, std::ptr::read(entry_sp as *const u64)) };
    // SAFETY: a post stub is only called by a detour's post block, which holds the detour's
    // address and the original address after the probed instruction at these distances
    // below the call's return address (`dprobe_arch::detour_code_with_post`).
    let (detour, next) = unsafe {
        (
            Addr(std::ptr::read((ret - POST_DETOUR_BACK) as *const u64)),
            std::ptr::read((ret - POST_NEXT_BACK) as *const u64),
        )
    };
    // The rest of the relocated window continues after the post block's `lea rsp` (8 bytes).
    let rest = ret + 8;
    let rsp = entry_sp + STUB_TO_RSP;
    (regs.rsp, regs.rip) = (rsp, next);
    let (ran, held) = thread_state::current().map_or((false, None), |state| {
        abandoned::forget_left_hit_path(state, rsp);
        hit_stack::off_alternate_stack_holding(state, rsp, || {
            let _hit_path = trap::HitPath::with(Some(state));
            // SAFETY: as in `jump_dispatch`.
            let jump_site = unsafe { jump_site_of(detour) };
            let _reading = Reading::enter(state);
            let site = jump_site.site.load(Acquire);
            // SAFETY: as in `jump_dispatch`.
            !site.is_null() && trap::dispatch_post_in(state, unsafe { &*site }, regs)
        })
    });
    let target = if !ran || regs.rip == next { rest } else { regs.rip };
    // SAFETY: as above.
    unsafe { resume(regs, entry_sp, detour, target, rest, rsp, held) };
}

/// Tell the stub where to continue: at `normal` (its return address, untouched) when the
/// handlers left RIP and the stack pointer alone, else at `target` with the stack pointer a
/// handler chose, through the detour's `ret 128`: below that stack pointer's red zone go the
/// redirect slot (`target`) and the return address (the detour's redirect). The flags the
/// handlers left go just below the return address, and the frame's `rsp` points at them
/// (the stub's last steps: `mov rsp, [frame.rsp]`, `popfq`, `ret`).
///
/// `held`: the signal mask to put back, when the hit path moved off the program's alternate
/// stack with its signals held; the stub then returns to `signals_released.rs`, which puts the
/// mask below the flags back and goes on as the redirect does.
///
/// The stack pointer can only move up (a handler that pops, e.g. to return from the function):
/// below the stub's entry are its frame and this dispatcher's stack. A handler that lowers the
/// stack pointer on a jump-optimized probe sees its RIP change honoured and its stack pointer
/// change ignored.
///
/// # Safety
/// `regs` is the stub's frame, `entry_sp` its stack pointer at entry, `rsp` the stack pointer
/// at the probe.
unsafe fn resume(regs: &mut Regs, entry_sp: u64, detour: Addr, target: u64, normal: u64, rsp: u64, held: Option<u64>) {
    let to = if target == normal && regs.rsp == rsp && held.is_none() {
        entry_sp
    } else {
        let to = regs.rsp.max(rsp) - STUB_TO_RSP;
        let next = match held {
            None => detour.offset(DETOUR_REDIRECT),
            Some(mask) => {
                // SAFETY: the word two below `to`, at or above the stub's push of `rbx` (read
                // already): above the frame `regs`, below the program's stack.
                unsafe { std::ptr::write((to + 8 - signals_released::MASK_BELOW) as *mut u64, mask) };
                signals_released::address()
            }
        };
        // SAFETY: `to` is at or above `entry_sp` and its two words below the red zone of the
        // stack pointer the handler chose: stack the program does not use (at `entry_sp`, the
        // stub's return address and the detour's redirect slot, which it reads no more).
        unsafe {
            std::ptr::write(to as *mut u64, next.0);
            std::ptr::write((to + 8) as *mut u64, target);
        }
        to
    };
    // SAFETY: the word below `to`, at or above the stub's push of the flags (read already):
    // above the frame `regs`, below the program's stack.
    unsafe { std::ptr::write((to - 8) as *mut u64, regs.rflags) };
    regs.rsp = to - 8;
}
