//! The hit path: dprobe's `SIGTRAP` and fault handlers.
//!
//! Everything reachable from here is async-signal-safe: table lookups are RCU reads (atomics
//! only), registers are copied on the stack, emulation writes the stack directly or goes
//! through one `process_vm_readv`, and nothing allocates or locks (a handler that panics is
//! the exception: the panic machinery allocates). These functions and everything in
//! dprobe's crates are refused as probe targets.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{compiler_fence, Ordering::SeqCst};

use dprobe_arch::{emulate, Addr, EmulateError, ExecPlan, Memory, MemoryFault, Prepared, INT3};
use dprobe_core::{FaultInfo, FaultStage, HandlerCall, HandlerFault, PreOutcome, Regs, Site, TrapKind};

use crate::context::SignalContext;
use crate::engine::Engine;
use crate::signals::{chain, Redeliver};
use crate::thread_state::{self, ThreadState};
use crate::{guard, hit_stack, interrupted, sys, x87_frame};

/// One of a thread's nesting counters, raised while the value lives (no counter: a thread
/// without its state, which nothing marks).
struct Raised(Option<&'static Cell<u32>>);

impl Raised {
    fn new(counter: Option<&'static Cell<u32>>) -> Raised {
        if let Some(c) = counter {
            c.set(c.get() + 1);
        }
        Raised(counter)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.set(c.get() - 1);
        }
    }
}

/// Marks the calling thread as doing dprobe's own work while it lives: the probes it passes
/// through (its `open` of `/proc/self/maps`, a `getpid`) run no handler and count nothing, so
/// that the user's figures are the program's alone.
pub struct OwnWork {
    // Dropped in this order: the count, then the mark.
    _raised: Raised,
    _mark: QuietMark,
}

impl OwnWork {
    #[inline(always)]
    pub(crate) fn enter() -> OwnWork {
        thread_state::init();
        let state = thread_state::current();
        let mark = mark_quiet_start(state);
        OwnWork { _raised: Raised::new(state.map(|s| &s.own_work)), _mark: mark }
    }
}

/// Note where the thread's stack stands as it enters dprobe's hit path or own work from
/// outside both (see `interrupted.rs`). Always inlined: the mark is in the frame of the
/// function that holds the raised counter, above every frame a signal may interrupt in it.
///
/// The mark made is undone when the value returned is dropped, after the counter is lowered:
/// a signal that comes between a mark and the raise of its counter runs a hit path that marks
/// too (the counters are still at zero), deeper; left there, that mark would make a later
/// hit of the outer path, above it, look like the hit of a path the program left for good
/// (`abandoned.rs`), which clears the thread's counters under a running handler.
#[inline(always)]
fn mark_quiet_start(state: Option<&'static ThreadState>) -> QuietMark {
    match state {
        Some(s) if s.in_hit_path.get() == 0 && s.own_work.get() == 0 => {
            let before = s.quiet_sp.replace(interrupted::stack_pointer());
            QuietMark(Some((s, before)))
        }
        _ => QuietMark(None),
    }
}

/// A mark of [`mark_quiet_start`]'s, with the one it replaced, put back when dropped.
struct QuietMark(Option<(&'static ThreadState, u64)>);

impl Drop for QuietMark {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some((s, before)) = self.0 {
            s.quiet_sp.set(before);
        }
    }
}

/// Mark what the calling thread does as dprobe's own while the value returned lives (a
/// tool's work on a thread of the program, such as the agent's in a forked child before
/// `fork` returns there): the probes it passes through run no handler and count nothing.
#[inline(always)]
pub fn own_work() -> OwnWork {
    OwnWork::enter()
}

/// Mark the calling thread as dprobe's own for the rest of its life (a tool's thread inside
/// the traced program, such as the agent's): the probes it passes through, and those its hit
/// path passes through in turn (a probed `memcpy`), run no handler and count nothing, as the
/// same calls made by a tracer in another process would not.
pub fn mark_own_thread() {
    // The raised count is never lowered: the thread's entry is zeroed when the thread exits.
    std::mem::forget(OwnWork::enter());
}

/// Marks, while it lives, what the calling thread does as the tool's own work: made in the
/// handlers of a tool whose handlers are its own machinery (the agent's, which copy and count
/// for a tracer in another process), so that the probes they pass through (a probed `memset`)
/// run no handler and count nothing, as the same calls made by that tracer would not. A
/// library user's handler does not make it: its hits count as missed (the kernel's rule).
/// Takes no lock and allocates nothing: made on the hit path.
pub struct ToolWork {
    state: Option<&'static ThreadState>,
    /// Dropped after the counts are lowered (`Drop` runs first).
    _mark: QuietMark,
}

/// Start a [`ToolWork`] (see there).
#[inline(always)]
pub fn tool_work() -> ToolWork {
    let state = thread_state::existing();
    let mark = mark_quiet_start(state);
    if let Some(s) = state {
        // The tool's count first, and lowered last: a program's signal that comes between the
        // two must not find own work without the tool's, which takes its handler's hits for
        // dprobe's own calls (counted nothing: about 0.3% of a handler's calls, where nearly
        // every signal came during a hit). The tool's count alone, in a handler's body, makes
        // such a hit a missed one, as it should be. The fences keep the compiler from
        // reordering the stores that a handler on this thread reads.
        s.tool_work.set(s.tool_work.get() + 1);
        compiler_fence(SeqCst);
        s.own_work.set(s.own_work.get() + 1);
        compiler_fence(SeqCst);
    }
    ToolWork { state, _mark: mark }
}

impl Drop for ToolWork {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(s) = self.state {
            compiler_fence(SeqCst);
            s.own_work.set(s.own_work.get() - 1);
            compiler_fence(SeqCst);
            s.tool_work.set(s.tool_work.get() - 1);
        }
    }
}

/// Thread `s`'s alternate signal stack `(base, size)` (size 0: none; `None`: unknown) when the code the
/// running handler probes trapped. Meaningful inside a handler only.
pub(crate) fn trapped_alternate_stack_of(s: &ThreadState) -> Option<(u64, u64)> {
    s.alternate_known.get().then(|| s.alternate.get())
}

/// Mark the calling thread as running handlers (the return trampoline's dispatcher uses this
/// around handler calls); `false` when the thread has no state (its handler must not run).
pub(crate) fn enter_handler() -> bool {
    let entered = thread_state::current().map(|s| s.in_handler.set(true)).is_some();
    // Seen by a signal on this thread before what the handlers count (`HitCount`).
    compiler_fence(SeqCst);
    entered
}

/// The end of [`enter_handler`].
pub(crate) fn leave_handler() {
    if let Some(s) = thread_state::existing() {
        s.in_handler.set(false);
    }
}

/// Whether the calling thread is inside dprobe's hit path (a `SIGTRAP` or fault handler of
/// dprobe). Async-signal-safe. Tests use it to prove that the hit path does not allocate.
pub fn in_hit_path() -> bool {
    thread_state::existing().is_some_and(|s| s.in_hit_path.get() > 0)
}

/// Marks the hit path for the duration of a signal handler or a jump path dispatch.
pub(crate) struct HitPath {
    // Dropped in this order: the count, then the mark.
    _raised: Raised,
    _mark: QuietMark,
}

impl HitPath {
    /// Mark the hit path of the thread whose state is `state`.
    #[inline(always)]
    pub(crate) fn with(state: Option<&'static ThreadState>) -> HitPath {
        let mark = mark_quiet_start(state);
        HitPath { _raised: Raised::new(state.map(|s| &s.in_hit_path)), _mark: mark }
    }
}

/// While the program's own signal handler runs, called from one of dprobe's (chaining), the
/// thread is out of dprobe's hit path: the probes that handler passes through are the
/// program's hits, not nested ones. Restores the depth when dropped.
/// The hit path's mark (`ThreadState::quiet_sp`) is kept too: the program's handler's hits
/// make their own.
pub(crate) struct ProgramHandler(Option<(&'static ThreadState, u32, u64)>);

impl ProgramHandler {
    pub(crate) fn enter() -> ProgramHandler {
        ProgramHandler(thread_state::existing().map(|s| (s, s.in_hit_path.replace(0), s.quiet_sp.get())))
    }
}

impl Drop for ProgramHandler {
    fn drop(&mut self) {
        if let Some((s, depth, mark)) = self.0 {
            s.in_hit_path.set(depth);
            s.quiet_sp.set(mark);
        }
    }
}

/// Whether the calling thread is running a probe handler.
pub fn in_handler() -> bool {
    thread_state::existing().is_some_and(|s| s.in_handler.get())
}

/// Why a hit runs no handler, decided from the thread's counters alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// dprobe's own work (registering, unregistering, a tool's own thread or handlers), or
    /// dprobe's hit path itself outside the body of a handler (a C library function it calls,
    /// such as `memcpy`, is probed): not the program's call, nothing counted.
    OwnWork,
    /// Inside the body of a handler, which called a probed function itself (the kernel's
    /// rule: such a hit is missed): counted as missed.
    Nested,
}

/// Whether a hit at stack pointer `rsp` of a thread whose hit-path depth was `depth` before
/// this hit runs no handler (`trapped`: the alternate stack its trap frame holds, if any;
/// `blocked`: the mask at the hit, asked only if needed). A hit in dprobe's hit path that came
/// from a program's signal handler that interrupted it is the program's: missed (see
/// `interrupted.rs`). In a tool's own work (where most of a hit's time goes), a signal frame
/// below the mark is enough to tell; elsewhere in the hit path, frames hold stale bytes of
/// earlier signal frames often enough (dprobe's own traps at the same depth) that the
/// handler must also be seen still running, from the mask. dprobe's own work (registering)
/// is not looked at: its many calls of C library functions would each pay for a scan.
fn quiet(
    state: &ThreadState,
    depth: u32,
    rsp: u64,
    trapped: Option<(u64, u64)>,
    blocked: impl FnOnce() -> u64,
) -> Option<Quiet> {
    if state.own_work.get() > 0 {
        // A tool's work raises both counts.
        let program = state.tool_work.get() > 0 && interrupted::by_program_signal(state, rsp, trapped);
        return Some(if program { Quiet::Nested } else { Quiet::OwnWork });
    }
    if state.handler_body.get() > 0 {
        return Some(Quiet::Nested);
    }
    if !state.in_handler.get() && depth == 0 {
        return None;
    }
    let program = interrupted::by_running_program_handler(state, rsp, trapped, blocked);
    Some(if program { Quiet::Nested } else { Quiet::OwnWork })
}

/// `SIGTRAP`: a probe's `int3`, the `int3` ending a slot, or somebody else's trap.
///
/// Whether the hit is nested is decided first, from the thread's counters, and a nested hit
/// is handled by [`on_quiet_entry`] / [`on_quiet_post_step`], which call no C library
/// function: the hit path's own copies of registers may call `memcpy`, and with `memcpy`
/// probed a nested hit that copied again would trap again, without end.
pub extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // A SIGSEGV this trap's work defers is this trap's alone: one an interrupted trap had
    // deferred is kept aside and put back for it.
    let state = thread_state::current();
    let outer = state.map(|s| s.deferred_segv.replace((false, 0)));
    // On a program's alternate stack, the hit path moves to a stack of dprobe's.
    let (handled, moved) = hit_stack::run_off_alternate_stack(state, uc, || trap_here(state, uc));
    let segv = state.zip(outer).and_then(|(s, outer)| {
        let (deferred, addr) = s.deferred_segv.replace(outer);
        deferred.then_some(addr)
    });
    // A program's handler is called from here, back on the stack the trap came from, with the
    // thread's mask and alternate stack as they were: it may leave with `longjmp`, and the
    // kernel's `rt_sigreturn` would not put them back then.
    if segv.is_some() || !handled {
        if let Some(moved) = moved {
            moved.undo();
        }
    }
    // SAFETY: the kernel passes the interrupted context as `uc`, valid during this handler.
    let mut ctx = unsafe { SignalContext::new(uc) };
    match segv {
        Some(addr) => deliver_segv_now(Addr(addr), &mut ctx),
        // SAFETY: this is dprobe's SIGTRAP handler, called with the kernel's arguments.
        None if !handled => unsafe { chain(sig, info, uc, Redeliver::Raise) },
        // SAFETY: `uc` is this handler's context, as above.
        None => unsafe { x87_frame::leave_initial_x87_unused(uc) },
    }
}

/// [`on_sigtrap`]'s work, on the stack it runs on: whether the trap was dprobe's. Never
/// inlined: its frame must be made on that stack, not in `on_sigtrap`'s before the switch.
#[inline(never)]
fn trap_here(state: Option<&'static ThreadState>, uc: *mut libc::c_void) -> bool {
    // SAFETY: the kernel passes the interrupted context as `uc`, valid during this handler.
    let mut ctx = unsafe { SignalContext::new(uc) };
    if let Some(s) = state {
        crate::abandoned::forget_left_hit_path(s, ctx.rsp());
    }
    let blocked = ctx.blocked_signals();
    let quiet = state.and_then(|s| quiet(s, s.in_hit_path.get(), ctx.rsp(), Some(ctx.alternate_stack()), || blocked));
    let _hit_path = HitPath::with(state);
    let _own_frame = interrupted::OwnFrame::enter(state, uc);
    let key = ctx.rip().wrapping_sub(1);
    Engine::get().is_some_and(|engine| {
        engine.table.lookup(key, |found| match (found, quiet) {
            (Some((site, TrapKind::Entry)), Some(why)) => on_quiet_entry(engine, site, why, &mut ctx),
            (Some((site, TrapKind::Entry)), None) => on_entry(site, &mut ctx),
            (Some((site, TrapKind::PostStep)), Some(_)) => {
                on_quiet_post_step(site, &mut ctx);
                true
            }
            (Some((site, TrapKind::PostStep)), None) => {
                on_post_step(site, &mut ctx);
                true
            }
            (None, _) => on_window_start(engine, Addr(key), &mut ctx),
        })
    })
}

/// The `int3` at the start of an exit window trapped (see `optimizer.rs`): no probe is here
/// (the exit's handlers belong to the exit), so no handler runs and nothing is counted; the
/// thread continues in the detour's copy of the instructions before the exit, or runs the
/// original instruction again once its byte is back. Only RIP changes (nothing that may call
/// the C library, see `on_sigtrap`).
fn on_window_start(engine: &Engine, addr: Addr, ctx: &mut SignalContext) -> bool {
    match engine.window_start(addr) {
        Some(Some(copy)) => ctx.set_rip(copy.0),
        Some(None) if code_byte(addr) != INT3 => ctx.set_rip(addr.0),
        _ => return false,
    }
    true
}

/// A probe's `int3` at `site.addr` trapped.
fn on_entry(site: &Site<Prepared>, ctx: &mut SignalContext) -> bool {
    if site.probes.is_empty() {
        return unprobed_entry(site, ctx);
    }
    let mut slot = MaybeUninit::uninit();
    let regs = ctx.regs_in(&mut slot);
    regs.rip = site.addr.0;
    dispatch_entry(site, regs, Some(ctx.alternate_stack()), |regs, d| match d {
        Dispatch::Missed => execute(site, regs, false, ctx),
        Dispatch::Ran(PreOutcome::Skip) => ctx.set_regs(regs),
        Dispatch::Ran(PreOutcome::Execute { post }) => execute(site, regs, post, ctx),
    });
    true
}

/// Every probe at `site` was unregistered after this thread trapped: if the original byte is
/// back, run the original instruction. An `int3` still there may be a debugger's leftover
/// (`debugger_leftover.rs`), put right and run through; else it is not ours.
fn unprobed_entry(site: &Site<Prepared>, ctx: &mut SignalContext) -> bool {
    if code_byte(site.addr) == INT3 && !crate::debugger_leftover::put_right(site) {
        return false;
    }
    ctx.set_rip(site.addr.0);
    true
}

/// A nested hit (see [`Quiet`]): count it, run no handler, and execute the displaced
/// instruction touching only what it needs: RIP for a route or a slot, the general registers
/// (filled word by word) for an emulated instruction. Nothing here may call the C library,
/// which may be probed (see `on_sigtrap`).
fn on_quiet_entry(engine: &Engine, site: &Site<Prepared>, why: Quiet, ctx: &mut SignalContext) -> bool {
    if site.probes.is_empty() {
        return unprobed_entry(site, ctx);
    }
    if why == Quiet::Nested {
        site.miss();
    }
    if let Some(copy) = engine.route(site.addr) {
        ctx.set_rip(copy.0);
        return true;
    }
    match site.arch.plan {
        ExecPlan::Slot(_) => ctx.set_rip(site.arch.slot_entry().map_or(site.addr.0, |a| a.0)),
        ExecPlan::Emulate(emulation) => {
            let mut slot = MaybeUninit::uninit();
            let regs = ctx.regs_in(&mut slot);
            regs.rip = site.addr.0;
            let mut mem = InprocMemory { rsp: regs.rsp };
            match emulate(emulation, site.arch.insn.next(), regs, &mut mem) {
                Ok(()) => ctx.set_gregs(regs),
                Err(EmulateError::Fault(fault)) => {
                    // The original would have faulted: deliver it at the probed instruction,
                    // with no fault handler (none runs for a hit inside a handler).
                    regs.rip = site.addr.0;
                    ctx.set_gregs(regs);
                    deliver_segv(fault.addr, ctx);
                }
            }
        }
    }
    true
}

/// The slot's final `int3` of a nested hit: its entry ran no handler, so no post-handler
/// runs either; only RIP moves on (nothing that may call the C library, see `on_sigtrap`).
fn on_quiet_post_step(site: &Site<Prepared>, ctx: &mut SignalContext) {
    ctx.set_rip(site.arch.step_resume().0);
}

/// Execute the displaced instruction, or, when the site's jump over several instructions is
/// live or about to be, continue in the detour's copy of them: the trap path must never send
/// a thread into the middle of the window (see `optimizer.rs`).
///
/// With post-handlers too: the site's jump and detour follow its probes, so a detour routed to
/// while a probe has a post-handler has the post block, which runs them after the first
/// instruction (the slot's post-step trap would resume inside the window).
fn execute(site: &Site<Prepared>, regs: &mut Regs, post: bool, ctx: &mut SignalContext) {
    if let Some(copy) = Engine::get().and_then(|e| e.route(site.addr)) {
        regs.rip = copy.0;
        ctx.set_regs(regs);
        return;
    }
    execute_here(site, regs, post, ctx);
}

/// What the entry dispatch did.
pub(crate) enum Dispatch {
    /// No handler ran: the hit came from inside a handler (the probes counted it as missed),
    /// or from dprobe's own work (not counted).
    Missed,
    /// The pre-handlers ran.
    Ran(PreOutcome),
}

/// The entry of a hit, for the trap and the jump path alike: run the pre-handlers under the
/// fault guard (or count a hit inside a handler as missed), then `then` with the outcome, still
/// marked as inside handlers (post-handlers run there).
pub(crate) fn dispatch_entry<R>(
    site: &Site<Prepared>,
    regs: &mut Regs,
    alternate_stack: Option<(u64, u64)>,
    then: impl FnOnce(&mut Regs, Dispatch) -> R,
) -> R {
    dispatch_entry_in(thread_state::current(), site, regs, alternate_stack, then)
}

/// [`dispatch_entry`] with the calling thread's state already found.
pub(crate) fn dispatch_entry_in<R>(
    state: Option<&'static ThreadState>,
    site: &Site<Prepared>,
    regs: &mut Regs,
    alternate_stack: Option<(u64, u64)>,
    then: impl FnOnce(&mut Regs, Dispatch) -> R,
) -> R {
    let Some(state) = state else {
        // No room for this thread's state: no handler can run safely.
        site.miss();
        return then(regs, Dispatch::Missed);
    };
    state.alternate_known.set(alternate_stack.is_some());
    state.alternate.set(alternate_stack.unwrap_or_default());
    // The caller raised the hit-path depth once for this hit: more is a hit from inside
    // dprobe's hit path (a C library function it calls is probed).
    match quiet(state, state.in_hit_path.get().saturating_sub(1), regs.rsp, alternate_stack, sys::signal_mask) {
        None => {}
        // dprobe's own call: not the program's, not a hit (nothing counted).
        Some(Quiet::OwnWork) => return then(regs, Dispatch::Missed),
        Some(Quiet::Nested) => {
            site.miss();
            return then(regs, Dispatch::Missed);
        }
    }
    state.in_handler.set(true);
    // Seen by a signal on this thread before the hit counts' load and store (`HitCount`): a
    // hit nested there must find it.
    compiler_fence(SeqCst);
    let outcome = site.run_pre(regs, &mut Guarded(Some(state)));
    let result = then(regs, Dispatch::Ran(outcome));
    state.in_handler.set(false);
    result
}

/// The post-handlers of a jump-optimized hit, run by its detour after the probed
/// instruction: whether they ran (not for a hit inside a handler or from dprobe's own work,
/// whose entry ran no handler either).
pub(crate) fn dispatch_post_in(state: &'static ThreadState, site: &Site<Prepared>, regs: &mut Regs) -> bool {
    if state.own_work.get() > 0 || state.in_handler.get() || state.in_hit_path.get() > 1 {
        return false;
    }
    state.alternate_known.set(false);
    state.in_handler.set(true);
    site.run_post(regs, &mut Guarded(Some(state)));
    state.in_handler.set(false);
    true
}

/// Execute the displaced instruction: emulate it (then run the post-handlers), or send the
/// thread to its slot. Writes the resulting registers to `ctx`.
fn execute_here(site: &Site<Prepared>, regs: &mut Regs, post: bool, ctx: &mut SignalContext) {
    match site.arch.plan {
        ExecPlan::Emulate(emulation) => {
            let mut mem = InprocMemory { rsp: regs.rsp };
            match emulate(emulation, site.arch.insn.next(), regs, &mut mem) {
                Ok(()) => {
                    if post {
                        site.run_post(regs, &mut Guarded(thread_state::current()));
                    }
                    ctx.set_regs(regs);
                }
                Err(EmulateError::Fault(fault)) => emulated_fault(site, regs, fault, ctx),
            }
        }
        ExecPlan::Slot(_) => {
            regs.rip = site.arch.slot_entry().map_or(site.addr.0, |a| a.0);
            ctx.set_regs(regs);
        }
    }
}

/// The slot's final `int3`: the instruction has run; continue after the original and run the
/// post-handlers.
fn on_post_step(site: &Site<Prepared>, ctx: &mut SignalContext) {
    let mut slot = MaybeUninit::uninit();
    let regs = ctx.regs_in(&mut slot);
    site.arch.finish_step(regs);
    if enter_handler() {
        site.run_post(regs, &mut Guarded(thread_state::current()));
        leave_handler();
    }
    ctx.set_regs(regs);
}

/// The emulated instruction's memory access failed, so the original would have faulted:
/// offer the fault to the fault handlers, else deliver `SIGSEGV` as the original would have,
/// with RIP at the probed instruction.
fn emulated_fault(site: &Site<Prepared>, regs: &mut Regs, fault: MemoryFault, ctx: &mut SignalContext) {
    let info = FaultInfo { signal: libc::SIGSEGV, fault_addr: Some(fault.addr), stage: FaultStage::Instruction };
    if run_fault_handlers(site, regs, &info) {
        ctx.set_regs(regs);
        return;
    }
    regs.rip = site.addr.0;
    ctx.set_regs(regs);
    deliver_segv(fault.addr, ctx);
}

/// Offer a fault to `site`'s fault handlers, through the fault guard as every handler (a
/// handler body: what it calls itself counts as missed, see [`quiet`]).
fn run_fault_handlers(site: &Site<Prepared>, regs: &mut Regs, info: &FaultInfo) -> bool {
    site.run_fault(regs, info, &mut Guarded(thread_state::current()))
}

/// Deliver the `SIGSEGV` an emulated instruction's access at `addr` would have raised, with
/// the registers already in `ctx`: once the trap handler's work is done (`on_sigtrap`), off
/// the table's read section and back on the stack the trap came from.
fn deliver_segv(addr: Addr, ctx: &mut SignalContext) {
    match thread_state::existing() {
        Some(s) => s.deferred_segv.set((true, addr.0)),
        None => deliver_segv_now(addr, ctx),
    }
}

/// [`deliver_segv`], now. Inside a guarded call (a hit nested in a handler, whose probed
/// function the handler called), the fault is the handler's, as a real fault there would be
/// (`on_fault`): the handler is abandoned where it stood, and the program's own handler never
/// sees a fault of dprobe's handlers. Unless a program's signal handler interrupted that
/// handler and made the access: its fault is the program's, and abandoning the handler would
/// skip the end of the program's (its signal left blocked for good).
fn deliver_segv_now(addr: Addr, ctx: &mut SignalContext) {
    let handlers = thread_state::existing().is_some_and(|s| {
        !s.guard_point.get().is_null() && !interrupted::by_program_signal(s, ctx.rsp(), Some(ctx.alternate_stack()))
    });
    if let Some((rsp, rip)) = handlers.then(|| guard::recovery_point(libc::SIGSEGV, addr.0)).flatten() {
        ctx.set_rsp(rsp);
        ctx.set_rip(rip);
        return;
    }
    let mut si = segv_info(addr);
    // SAFETY: we are in dprobe's SIGTRAP handler; `si` is a valid siginfo for SIGSEGV and
    // `ctx` the interrupted context. A program handler that returns re-executes the probed
    // instruction (RIP is at it), as after a real fault.
    unsafe { chain(libc::SIGSEGV, &mut si, ctx.raw(), Redeliver::Raise) };
}

fn segv_info(addr: Addr) -> libc::siginfo_t {
    #[repr(C)]
    struct SegvInfo {
        signo: i32,
        errno: i32,
        code: i32,
        pad: i32,
        addr: u64,
    }
    // SAFETY: all-zero is a valid siginfo_t (plain old data).
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let fields = SegvInfo { signo: libc::SIGSEGV, errno: 0, code: 1 /* SEGV_MAPERR */, pad: 0, addr: addr.0 };
    // SAFETY: `SegvInfo` is the x86-64 layout of siginfo_t's first fields for SIGSEGV
    // (si_signo, si_errno, si_code, padding, si_addr) and is smaller than siginfo_t.
    unsafe { std::ptr::write_unaligned((&mut si as *mut libc::siginfo_t).cast::<SegvInfo>(), fields) };
    si
}

/// A fault in a copy of the instruction probed at `site` (its slot, or its detour's window),
/// with `regs` mapped back to the original instruction: whether the site's fault handlers
/// handled it (none runs for a fault inside a handler).
fn instruction_fault_handled(engine: &Engine, site: Addr, regs: &mut Regs, sig: libc::c_int, fault_addr: u64) -> bool {
    let info = FaultInfo { signal: sig, fault_addr: Some(Addr(fault_addr)), stage: FaultStage::Instruction };
    !in_handler()
        && engine.table.lookup(site.0, |found| match found {
            Some((s, TrapKind::Entry)) => run_fault_handlers(s, regs, &info),
            _ => false,
        })
}

/// `SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`: a fault in a handler (recover), in a slot (map it
/// back to the original instruction), or the program's own (chain).
pub extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let state = thread_state::current();
    let _hit_path = HitPath::with(state);
    let _own_frame = interrupted::OwnFrame::enter(state, uc);
    // SAFETY: the kernel passes valid `info` and `uc` to an SA_SIGINFO handler.
    let (mut ctx, fault_addr) = unsafe { (SignalContext::new(uc), (*info).si_addr() as u64) };
    // SAFETY: as above.
    let raised_by_the_kernel = unsafe { (*info).si_code } > 0;
    // A signal another thread or process sent (`kill`, `tgkill`: `si_code` of zero or less)
    // is no fault of the guarded code: it goes where the program would have it go. Nor is a
    // fault of a program's signal handler that interrupted the guarded code.
    let guarded = raised_by_the_kernel
        && !state.is_some_and(|s| {
            guard::guarded_stack_pointer(s).is_some_and(|sp| {
                interrupted::fault_in_program_handler(s, ctx.rsp(), sp, ctx.alternate_stack(), ctx.blocked_signals())
            })
        });
    if let Some((rsp, rip)) = guarded.then(|| guard::recovery_point(sig, fault_addr)).flatten() {
        ctx.set_rsp(rsp);
        ctx.set_rip(rip);
        return;
    }
    let rip = ctx.rip();
    if let Some(engine) = Engine::get() {
        if let Some(slot) = engine.slot_containing(Addr(rip)) {
            let mut frame = MaybeUninit::uninit();
            let regs = ctx.regs_in(&mut frame);
            let mut mem = InprocMemory { rsp: regs.rsp };
            if slot.map_fault(regs, &mut mem).is_ok() {
                if instruction_fault_handled(engine, slot.original, regs, sig, fault_addr) {
                    ctx.set_regs(regs);
                    return;
                }
                // SIGFPE and SIGILL report the instruction's own address: show the original.
                // SAFETY: `info` is the kernel's siginfo for this signal, writable by its handler.
                unsafe { map_fault_address(info, &slot) };
                if crate::signals::has_program_handler(sig) {
                    // Show the program its fault at the original instruction; if its handler
                    // returns without moving RIP, run the slot again from its start.
                    ctx.set_regs(regs);
                    // SAFETY: dprobe's handler for `sig`, kernel arguments.
                    unsafe { chain(sig, info, uc, Redeliver::Refault) };
                    if ctx.rip() == slot.original.0 {
                        ctx.set_rip(slot.addr.0);
                    }
                    return;
                }
            }
        }
    }
    if let Some(window) = Engine::get().and_then(|e| e.window_containing(Addr(rip))) {
        // SAFETY: dprobe's handler for `sig`, kernel arguments.
        if unsafe { window_fault(sig, info, uc, &mut ctx, window, fault_addr) } {
            return;
        }
    }
    // SAFETY: dprobe's handler for `sig`, kernel arguments.
    unsafe { chain(sig, info, uc, Redeliver::Refault) };
}

/// The copy of a jump-optimized probe's instruction faulted: the original would have, at its
/// own address. Offer the fault to the probes' fault handlers, then to the program's handler
/// with RIP at the original instruction; if that handler returns without moving RIP, the copy
/// runs again (not the jump, which would count a second hit). Returns false when neither
/// exists: the fault is then delivered where it happened.
///
/// # Safety
/// The arguments are the kernel's for dprobe's handler of `sig`.
unsafe fn window_fault(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
    ctx: &mut SignalContext,
    window: crate::engine::WindowCopy,
    fault_addr: u64,
) -> bool {
    let Some(engine) = Engine::get() else { return false };
    let mut frame = MaybeUninit::uninit();
    let regs = ctx.regs_in(&mut frame);
    let (original, copy) = window.instruction_at(Addr(ctx.rip()));
    regs.rip = original.0;
    if instruction_fault_handled(engine, window.original, regs, sig, fault_addr) {
        ctx.set_regs(regs);
        return true;
    }
    if !crate::signals::has_program_handler(sig) {
        return false;
    }
    // SAFETY: `info` is the kernel's siginfo; si_addr sits at offset 16 for fault signals.
    unsafe {
        if (window.copy.0..window.end.0).contains(&fault_addr) {
            (info as *mut u8).add(16).cast::<u64>().write_unaligned(original.0);
        }
    }
    ctx.set_regs(regs);
    // SAFETY: per this function's contract.
    unsafe { chain(sig, info, uc, Redeliver::Refault) };
    if ctx.rip() == original.0 {
        ctx.set_rip(copy.0);
    }
    true
}

/// Rewrite `si_addr` when it points into the slot (instruction faults report the faulting
/// instruction's address).
///
/// # Safety
/// `info` must be the siginfo the kernel passed to the running handler.
unsafe fn map_fault_address(info: *mut libc::siginfo_t, slot: &dprobe_arch::SlotCode) {
    // SAFETY: per the contract; si_addr sits at offset 16 of the x86-64 siginfo_t for fault
    // signals, the field `si_addr()` reads.
    unsafe {
        let addr = (*info).si_addr() as u64;
        if slot.contains(Addr(addr)) {
            let field = (info as *mut u8).add(16).cast::<u64>();
            field.write_unaligned(slot.original.0);
        }
    }
}

/// Runs each handler under the fault guard.
struct Guarded(Option<&'static ThreadState>);

impl HandlerCall for Guarded {
    fn call(&mut self, f: impl FnMut()) -> Result<(), HandlerFault> {
        guard::call_guarded_in(self.0, f)
    }

    /// A hit of the thread inside `run_pre` finds `in_handler` set and runs no handler
    /// (`quiet`): its counts never nest.
    fn thread(&self) -> u64 {
        self.0.map_or(0, ThreadState::count_word)
    }
}

fn code_byte(addr: Addr) -> u8 {
    // SAFETY: `addr` is a probe site: executable code of a loaded object that dprobe checked
    // at registration, and code is never unmapped while its site is in the table.
    unsafe { std::ptr::read_volatile(addr.0 as *const u8) }
}

/// Memory as seen by the emulator: the few bytes around the stack pointer are accessed
/// directly (the kernel has just written the signal frame below them, so they are mapped),
/// anything else through the non-faulting `process_vm_readv`/`writev`.
pub struct InprocMemory {
    /// The interrupted thread's stack pointer.
    pub rsp: u64,
}

impl InprocMemory {
    fn near_stack(&self, addr: Addr, len: usize) -> bool {
        addr.0 >= self.rsp.wrapping_sub(64) && addr.0.wrapping_add(len as u64) <= self.rsp.wrapping_add(64)
    }
}

impl Memory for InprocMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        if self.near_stack(addr, buf.len()) {
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: within 64 bytes of the interrupted stack pointer, on the stack the
                // signal frame was pushed to (see the type's comment).
                *b = unsafe { std::ptr::read_volatile((addr.0 + i as u64) as *const u8) };
            }
            return Ok(());
        }
        sys::read_memory(addr, buf)
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        if self.near_stack(addr, data.len()) {
            for (i, b) in data.iter().enumerate() {
                // SAFETY: as in `read`; the bytes just below the stack pointer are the red
                // zone the kernel skipped, which the emulated push owns.
                unsafe { std::ptr::write_volatile((addr.0 + i as u64) as *mut u8, *b) };
            }
            return Ok(());
        }
        sys::write_memory(addr, data)
    }
}
