//! Return probes (kretprobes): a handler that runs when the probed function returns, with the
//! return value in `rax`/`xmm0` (writable), and optionally an entry handler that sees the
//! arguments, may veto the instance and fills per-instance private data.
//!
//! # Two ways to watch returns
//! Where every exit of the function is known (each `ret`, each tail call: whole-function
//! decode), the returns are watched at those exits and the stack is never touched (see
//! `exits.rs`): exceptions, `longjmp`, alternate stacks, deep recursion and code that reads
//! its own return address all see the stack they left. Where the exits are not all known (an
//! indirect jump that may leave), or when [`Kretprobe::via_return_address`] asks for it, the
//! return address is replaced, as described below. [`ReturnProbe::return_mode`] says which,
//! and why.
//!
//! # Through the return address
//! The entry is an ordinary probe on the function's first instruction. Its handler takes an
//! instance from the probe's pool (see `instances.rs`: `maxactive` of them when it is given,
//! else as many as calls are in flight; none to be had: the hit is missed and counted),
//! records the stack pointer and the return address on the thread's pending stack (see
//! `chunked_stack.rs`: as deep as the thread goes), and writes the address of an assembly
//! trampoline over the return address. When the function returns, it returns into the trampoline (no trap): it saves the
//! registers and calls the dispatcher, which pops the matching entry, runs the handler and
//! returns the real address to jump to.
//!
//! # Unbalanced calls and returns (kprobe rule 11)
//! Which pending entries are still alive is `dprobe_core::returns`' rule, the one every engine
//! uses, applied to the thread's pending stack at each entry and each return:
//! * `longjmp` (and anything that abandons frames without unwinding): a pending entry below
//!   the current return-address slot on the same stack belongs to a frame that no longer
//!   exists, and so does one whose slot a new call has reused; it is reclaimed (and counted
//!   as stale).
//! * A tail call between return-probed functions (`outer: jmp inner`), or a second return
//!   probe on one function: the entry finds its slot already hijacked and chains to the
//!   pending entry there; each returns once, innermost first, through the trampoline again.
//! * A function watched at its exits that leaves by a tail call into a function whose exits
//!   are not watched hijacks the return address its callee returns through, with an entry of
//!   the same pending stack (see `exits.rs`): the same rule, unwinder probes and trampoline
//!   serve it.
//! * C++ exceptions, Rust panics, `pthread_exit` and thread cancellation unwind through
//!   `_Unwind_RaiseException` / `_Unwind_ForcedUnwind`. dprobe probes both: before the
//!   unwinder walks the stack, every return address the thread has hijacked is put back, so
//!   the unwinder sees the real call chain; those instances are reclaimed and counted as
//!   unwound (their functions may still return, untraced).
//! * A thread that exits with pending instances (`pthread_exit` without unwinding) gives
//!   them back as it goes (counted as stale); one that ends without running its
//!   thread-specific destructors leaves them owned by a dead thread id, which a pool
//!   reclaims when it runs dry, and before it grows.
//! * A function that never returns leaves only its (reclaimable) instance behind.
//!
//! # Foreign stacks (kprobe rule 12)
//! A function entered on the thread's alternate signal stack is traced: the rule tells the
//! alternate stack (its range, from the signal frame or `sigaltstack`) from the thread's own,
//! and never judges an entry on one from the other, whichever lies higher. Code that switches
//! stacks by itself (coroutines, green threads) is told apart by the mapping each stack lies
//! in ([`crate::stack_mappings`]); stacks carved out of one mapping (from the heap) are not.
//! Should a pending entry be reclaimed by mistake there, the dispatcher still finds its return
//! address in a per-thread record of the last reclaimed entries, so the program returns
//! correctly; only the handler call is lost. A coroutine suspended inside a probed function and
//! resumed on another thread returns there through the trampoline: its address is found in a
//! table of every address replaced (`hijacked.rs`), the handler call lost too (the entry, and
//! its instance, are the first thread's, which drops them as stale).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};

use dprobe_arch::{Addr, Regs};
use dprobe_core::returns::{self, At, InstanceStack, ReturnMode, StackNames, ThreadStacks};
use dprobe_core::{HitCount, Kprobe, PreAction, ProbeError, Stats};
use dprobe_rcu::Rcu;

use crate::chunked_stack::{self, stack_entry, ChunkedStack};
use crate::instances::Instances;
use crate::probe::{register, Probe};
use crate::saved::{restore_registers, save_registers, SavedRegs, SAVED_BYTES};
use crate::stack_mappings::{self, KnownStacks};
use crate::thread_state::ThreadState;
use crate::{engine::Engine, exits, guard, hijacked, hit_stack, sys, thread_state, trap};

/// Private data carried from a return probe's entry handler to its return handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceData(pub [u64; 8]);

/// What an entry handler decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryAction {
    /// Trace this call's return.
    Track,
    /// Do not trace it (the kernel's non-zero `entry_handler` return): the instance goes back
    /// to the pool and nothing is counted.
    Skip,
}

type EntryHandler = Box<dyn Fn(&mut Regs, &mut InstanceData) -> EntryAction + Send + Sync>;
type ReturnHandler = Box<dyn Fn(&mut Regs, &InstanceData) + Send + Sync>;

/// A return probe: a function, a return handler, an optional entry handler, and how many
/// calls can be in flight at once.
pub struct Kretprobe {
    function: Kprobe,
    maxactive: Option<usize>,
    entry: Option<EntryHandler>,
    handler: Option<ReturnHandler>,
    via_return_address: bool,
}

impl Kretprobe {
    /// A return probe on a function (`[object:]name`).
    pub fn symbol(name: &str) -> Self {
        Self::on(Kprobe::symbol(name))
    }

    /// A return probe on the function starting at `addr`.
    pub fn addr(addr: Addr) -> Self {
        Self::on(Kprobe::addr(addr))
    }

    /// A return probe on the function whose first instruction `function` names (the
    /// kernel's `kretprobe.kp`; its handlers are not used).
    pub fn on(function: Kprobe) -> Self {
        Kretprobe { function, maxactive: None, entry: None, handler: None, via_return_address: false }
    }

    /// How many activations can be traced at once (threads × recursion depth); the calls
    /// beyond are missed and counted. Default: no limit (as many as the program makes, as long
    /// as memory for them can be mapped).
    pub fn maxactive(mut self, n: usize) -> Self {
        self.maxactive = Some(n);
        self
    }

    /// The return handler: sees the registers at the return (`rax`/`rdx`/`xmm0` hold the
    /// return value; changes are what the caller sees) and the instance's private data.
    pub fn handler(mut self, f: impl Fn(&mut Regs, &InstanceData) + Send + Sync + 'static) -> Self {
        self.handler = Some(Box::new(f));
        self
    }

    /// Watch the returns through the return address even where the function's exits are all
    /// known (see [`ReturnMode`]).
    pub fn via_return_address(mut self) -> Self {
        self.via_return_address = true;
        self
    }

    /// The entry handler: sees the registers at the function's entry, fills the private data,
    /// and may skip the instance.
    pub fn entry_handler(
        mut self,
        f: impl Fn(&mut Regs, &mut InstanceData) -> EntryAction + Send + Sync + 'static,
    ) -> Self {
        self.entry = Some(Box::new(f));
        self
    }
}

/// How a handler call ended.
enum Ran {
    ToItsEnd,
    Panicked,
    Faulted,
}

/// The part of a return probe the hit path sees.
pub(crate) struct KretInner {
    pub(crate) id: u64,
    /// Its index in the registry last published (a hint: see [`find_at`]).
    place: AtomicU32,
    pub(crate) entry: Option<EntryHandler>,
    handler: Option<ReturnHandler>,
    pool: Instances,
    hits: HitCount,
    pub(crate) nmissed: AtomicU64,
    pub(crate) stale: AtomicU64,
    unwound: AtomicU64,
    last_dead_thread_scan: AtomicU64,
    /// Set when the return handler panicked: it is not called again.
    handler_panicked: AtomicBool,
    /// Calls the entry saw, when the exits are watched (there is no entry probe of its own).
    pub(crate) entries: HitCount,
    /// Handler calls that panicked or faulted (the entry handler's too when the exits are
    /// watched).
    panics: AtomicU64,
    faults: AtomicU64,
}

impl KretInner {
    /// Take a free instance, giving back those of dead threads when none is free, then
    /// growing the pool if it has no fixed size.
    pub(crate) fn take_or_reclaim(&self, tid: u32) -> Option<usize> {
        self.pool.take_free(tid).or_else(|| {
            self.reclaim_dead_threads();
            self.pool.take(tid)
        })
    }

    /// The private data of instance `slot`.
    pub(crate) fn data(&self, slot: usize) -> InstanceData {
        self.pool.data(slot)
    }

    /// Keep `data` in instance `slot`.
    pub(crate) fn set_data(&self, slot: usize, data: &InstanceData) {
        self.pool.set_data(slot, data);
    }

    /// Run the entry handler (the caller runs inside handlers already); a handler that panics
    /// or faults skips the call.
    pub(crate) fn entered(&self, state: &ThreadState, regs: &mut Regs, data: &mut InstanceData) -> EntryAction {
        let Some(entry) = self.entry.as_ref() else { return EntryAction::Track };
        let mut action = EntryAction::Skip;
        match self.guarded(Some(state), || action = entry(regs, data)) {
            Ran::ToItsEnd => action,
            Ran::Panicked | Ran::Faulted => EntryAction::Skip,
        }
    }

    /// A call returned with `regs` (where it returns to, the stack pointer past the return
    /// address): count it and run the return handler (the caller marks the thread as inside
    /// handlers). Returns whether the handler ran to its end; `regs` holds what it changed.
    pub(crate) fn returned(&self, state: Option<&ThreadState>, regs: &mut Regs, data: &InstanceData) -> bool {
        // Inside handlers (the caller's mark): the thread's returns never nest here.
        self.hits.add_by(state.map_or(0, ThreadState::count_word));
        let Some(handler) = self.handler.as_ref().filter(|_| !self.handler_panicked.load(Relaxed)) else {
            return false;
        };
        match self.guarded(state, || handler(regs, data)) {
            Ran::ToItsEnd => true,
            // Not called again; what it changed before it panicked stands.
            Ran::Panicked => {
                self.handler_panicked.store(true, Relaxed);
                true
            }
            Ran::Faulted => false,
        }
    }

    /// Run `f` under the fault guard of thread `state`, catching a panic. Generic, as the
    /// entry path's guarded call is: the handler is called straight from the guard's
    /// trampoline, with no second look-up of the thread.
    fn guarded(&self, state: Option<&ThreadState>, mut f: impl FnMut()) -> Ran {
        let mut panicked = false;
        let called = guard::call_guarded_in(state, || {
            panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f)).is_err();
        });
        match (called, panicked) {
            (Ok(()), false) => Ran::ToItsEnd,
            (Ok(()), true) => {
                self.panics.fetch_add(1, Relaxed);
                Ran::Panicked
            }
            (Err(_), _) => {
                self.faults.fetch_add(1, Relaxed);
                Ran::Faulted
            }
        }
    }

    pub(crate) fn release(&self, slot: usize) {
        self.pool.release(slot);
    }

    /// See [`Instances::park`].
    pub(crate) fn park(&self, slot: usize, tid: u32) -> bool {
        self.pool.park(slot, tid)
    }

    /// See [`Instances::unpark`].
    pub(crate) fn unpark(&self, slot: usize, tid: u32) {
        self.pool.unpark(slot, tid);
    }

    /// See [`Instances::give_back_parked`].
    pub(crate) fn give_back_parked(&self, slot: usize) {
        self.pool.give_back_parked(slot);
    }

    fn pending(&self) -> u64 {
        self.pool.in_flight()
    }

    /// No instance is free: give back those held by threads that no longer exist. At most
    /// every 10 ms, since it costs system calls.
    fn reclaim_dead_threads(&self) {
        let now = monotonic_ms();
        let last = self.last_dead_thread_scan.load(Relaxed);
        if now < last + 10 || self.last_dead_thread_scan.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            return;
        }
        self.stale.fetch_add(self.pool.reclaim_dead_threads(), Relaxed);
    }
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Every live return probe, by id, for the dispatcher.
/// In a child process just forked: see [`Rcu::forget_readers_after_fork`].
pub(crate) fn forget_readers_after_fork() {
    registry().forget_readers_after_fork();
}

pub(crate) fn registry() -> &'static Rcu<Vec<Arc<KretInner>>> {
    static REGISTRY: OnceLock<Rcu<Vec<Arc<KretInner>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Rcu::with_grace(Vec::new(), crate::jump::grace))
}

// ---------------------------------------------------------------------------------------------
// The per-thread pending stack: all zeroes, without destructors: signal-safe.

const GRAVE: usize = 64;
/// Pending returns held in the thread's table entry; deeper ones in chunks it maps.
const INLINE: usize = 256;

/// One pending return. All zeroes is a valid (unused) entry.
struct Pending {
    /// The return-address slot.
    sp: Cell<u64>,
    /// The real return address.
    ret: Cell<u64>,
    probe: Cell<u64>,
    /// The probe's instance.
    slot: Cell<u32>,
    /// Which stack `sp` lies on ([`OwnStacks`]).
    stack: Cell<u64>,
}

stack_entry!(Pending { sp, ret, probe, slot, stack });

/// A thread's pending returns, in its [`crate::thread_state::ThreadState`]: all zeroes is
/// empty.
pub(crate) struct ThreadReturns {
    stack: ChunkedStack<Pending, INLINE>,
    /// The last reclaimed entries' `(sp, return address)`: a safety net (see the module docs).
    grave: [(Cell<u64>, Cell<u64>); GRAVE],
    grave_next: Cell<usize>,
}

/// The thread owning `t` is gone (or, in a forked child, is not there): its pending returns
/// give their instances back, counted as stale, and its chunks are unmapped.
pub(crate) fn thread_gone(t: &ThreadReturns) {
    if t.stack.depth() > 0 {
        registry().read(|probes| {
            for i in 0..t.stack.depth() {
                let e = t.stack.get(i);
                // Tail-call entries hold no instance; the activations they return are the
                // exit stack's, which goes with the thread too.
                hijacked::left(e.sp.get(), e.ret.get());
                if let Some(p) = find(probes, e.probe.get()).filter(|_| e.probe.get() != TAIL_CALLS) {
                    p.release(e.slot.get() as usize);
                    p.stale.fetch_add(1, Relaxed);
                }
            }
        });
    }
    t.stack.unmap_all();
}

/// How many chunks of memory the calling thread holds for its returns pending through return
/// addresses beyond the first 256 (each twice the size of the one before). They are given
/// back as the thread comes back up (one is kept beyond the one in use), and when it exits.
pub fn thread_return_chunks() -> usize {
    thread_state::existing().map_or(0, |s| s.returns.stack.chunks())
}

/// How many chunks of memory every thread of the process holds together for its pending
/// returns: through return addresses ([`thread_return_chunks`]) and at functions' exits
/// (beyond the first 256 calls).
pub fn process_return_chunks() -> usize {
    chunked_stack::mapped_chunks()
}

/// Why a pending entry is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    Stale,
    Unwound,
}

/// Remove entry `i`, the ones above it moving down.
fn remove_at(t: &ThreadReturns, i: usize) {
    let e = t.stack.get(i);
    hijacked::left(e.sp.get(), e.ret.get());
    t.stack.remove_at(i);
}

/// Drop entry `i`, giving its instance back and remembering its return address.
fn drop_at(t: &ThreadReturns, i: usize, kind: Reclaim, probes: &[Arc<KretInner>]) {
    let e = t.stack.get(i);
    if e.probe.get() == TAIL_CALLS {
        exits::abandon_through_slot(e.sp.get(), probes);
    } else if let Some(p) = find(probes, e.probe.get()) {
        p.release(e.slot.get() as usize);
        match kind {
            Reclaim::Stale => p.stale.fetch_add(1, Relaxed),
            Reclaim::Unwound => p.unwound.fetch_add(1, Relaxed),
        };
    }
    let g = t.grave_next.get();
    t.grave[g % GRAVE].0.set(e.sp.get());
    t.grave[g % GRAVE].1.set(e.ret.get());
    t.grave_next.set(g + 1);
    remove_at(t, i);
}

pub(crate) fn find(probes: &[Arc<KretInner>], id: u64) -> Option<&KretInner> {
    probes.binary_search_by_key(&id, |p| p.id).ok().map(|i| &*probes[i])
}

/// Probe `id` in the registry `probes`, looked for first at index `at` (its place when it was
/// taken: [`KretInner::place`]): one load where the registry has not changed since, a search
/// where it has. An exit finds each returning probe this way (a binary search reads a probe
/// at each step: most of an exit's look-ups).
pub(crate) fn find_at(probes: &[Arc<KretInner>], id: u64, at: u32) -> Option<&KretInner> {
    match probes.get(at as usize) {
        Some(p) if p.id == id => Some(p),
        _ => find(probes, id),
    }
}

impl KretInner {
    /// Its index in the registry last published, for [`find_at`].
    pub(crate) fn place(&self) -> u32 {
        self.place.load(Relaxed)
    }
}

/// Each probe of a registry about to be published notes its index there. A reader of the
/// previous registry that reads a new index finds another probe there, and searches.
fn note_places(list: &[Arc<KretInner>]) {
    for (i, p) in list.iter().enumerate() {
        p.place.store(i as u32, Relaxed);
    }
}

/// A thread's pending stack as the rule sees it; reclaiming counts the entry as stale.
struct Live<'a> {
    t: &'a ThreadReturns,
    probes: &'a [Arc<KretInner>],
}

impl InstanceStack for Live<'_> {
    fn depth(&self) -> usize {
        self.t.stack.depth()
    }
    fn slot(&self, i: usize) -> u64 {
        self.t.stack.get(i).sp.get()
    }
    fn stack(&self, i: usize) -> u64 {
        self.t.stack.get(i).stack.get()
    }
    fn reclaim(&mut self, i: usize) {
        drop_at(self.t, i, Reclaim::Stale, self.probes);
    }
}

/// The calling thread's stacks, each named by the end of its mapping
/// ([`crate::stack_mappings`]), but for its alternate signal stack, named by its own end
/// (it may lie inside a larger mapping: the heap, another stack). The alternate stack's range
/// comes from the trap's signal frame at an entry, and from `sigaltstack` at a return, asked
/// only when the rule needs it.
pub(crate) struct OwnStacks {
    alternate: Option<(u64, u64)>,
    known: Option<&'static KnownStacks>,
}

impl OwnStacks {
    /// In a handler of thread `state`: the interrupted code's alternate stack, from its
    /// signal frame (asked of the kernel when needed on the jump path, which has none).
    pub(crate) fn at_trap(state: Option<&'static ThreadState>) -> Self {
        OwnStacks { alternate: state.and_then(trap::trapped_alternate_stack_of), known: state.map(|s| &s.stacks) }
    }

    /// Elsewhere (the trampoline's dispatcher): asked of the kernel when needed.
    pub(crate) fn unknown(state: Option<&'static ThreadState>) -> Self {
        OwnStacks { alternate: None, known: state.map(|s| &s.stacks) }
    }

    /// The name of the stack holding `addr`; `fresh`: as the kernel has it now, not as the
    /// thread remembers the mappings it met.
    fn name_of(&mut self, addr: u64, fresh: bool) -> u64 {
        let (base, size) = *self.alternate.get_or_insert_with(hit_stack::program_alternate_stack);
        if size != 0 && addr >= base && addr - base < size {
            return base + size;
        }
        match self.known {
            Some(known) if fresh => known.fresh_name_of(addr),
            Some(known) => known.name_of(addr),
            None => stack_mappings::mapping_of(addr).ok().flatten().map_or(0, |m| m.1),
        }
    }
}

impl StackNames for OwnStacks {
    fn stack_of(&mut self, addr: u64) -> u64 {
        self.name_of(addr, false)
    }

    fn same_stack(&mut self, a: u64, b: u64) -> bool {
        self.name_of(a, true) == self.name_of(b, true)
    }
}

impl ThreadStacks for OwnStacks {
    fn hijacked(&mut self, slot: u64) -> bool {
        // SAFETY: the rule asks only about the current return-address slot, on this thread's
        // live stack.
        unsafe { (slot as *const u64).read_volatile() == trampoline_addr() }
    }
}

/// The entry half, run as the pre-handler of the entry probe (in the trap handler).
fn on_entry(inner: &KretInner, regs: &mut Regs) {
    let Some(state) = thread_state::current() else {
        inner.nmissed.fetch_add(1, Relaxed);
        return;
    };
    let t = &state.returns;
    registry().read(|probes| {
        let sp = regs.rsp;
        // At a function's first instruction the return address is at rsp, on this
        // thread's stack (own or alternate).
        let ret_slot = regs.rsp as *mut u64;
        let mut stacks = OwnStacks::at_trap(Some(state));
        returns::reclaim(&mut Live { t, probes }, At::Entry { sp }, &mut stacks);
        if !t.stack.room() {
            inner.nmissed.fetch_add(1, Relaxed);
            return;
        }
        let tid = state.tid();
        let Some(slot) = inner.take_or_reclaim(tid) else {
            inner.nmissed.fetch_add(1, Relaxed);
            return;
        };
        let mut data = InstanceData::default();
        if let Some(entry) = &inner.entry {
            if entry(regs, &mut data) == EntryAction::Skip {
                inner.release(slot);
                return;
            }
        }
        inner.set_data(slot, &data);
        // SAFETY: the slot is writable stack (the kernel pushed the signal frame below it
        // on the same stack). When the entry chains to a pending one at this slot (a tail
        // call), this is the trampoline's address: the return comes through twice.
        let ret = unsafe { ret_slot.read_volatile() };
        let on = stacks.stack_of(sp);
        let pushed = t.stack.push(|e| {
            e.sp.set(sp);
            e.ret.set(ret);
            e.probe.set(inner.id);
            e.slot.set(slot as u32);
            e.stack.set(on);
        });
        if !pushed {
            inner.release(slot);
            inner.nmissed.fetch_add(1, Relaxed);
            return;
        }
        hijacked::replaced(sp, ret, trampoline_addr());
        // SAFETY: as above.
        unsafe { ret_slot.write_volatile(trampoline_addr()) };
    })
}

/// The probe id of a pending entry written for the tail calls of functions watched at their
/// exits (see `exits.rs`): no return probe has it.
const TAIL_CALLS: u64 = 0;

/// Whether a tail call from a function watched at its exits may write the trampoline into
/// the return address its callee returns through (no shadow stack; the unwinders probed).
static TAIL_RETURNS: AtomicBool = AtomicBool::new(false);

/// Let tail calls from functions watched at their exits return through the trampoline (not on
/// the hit path). False when they cannot: the process has a CET shadow stack.
pub(crate) fn enable_tail_returns() -> bool {
    if TAIL_RETURNS.load(Relaxed) {
        return true;
    }
    if check_shadow_stack().is_err() {
        return false;
    }
    // An exception must not meet the trampoline unseen.
    install_unwind_probes();
    TAIL_RETURNS.store(true, Relaxed);
    true
}

/// What became of a tail call's return (see [`return_through_slot`]).
pub(crate) enum TailReturn {
    /// It returns through the trampoline; `first`: the trampoline was written for it (else
    /// the one there returns it too).
    Through { first: bool },
    /// The thread's pending stack is full.
    NoRoom,
    /// Tail calls cannot return so in this process (a CET shadow stack).
    Unavailable,
}

/// A function watched at its exits leaves by a tail call (the return address its callee
/// returns through at `sp`) into a function whose exits are not watched: the trampoline goes
/// into that word, with an entry of this thread's pending stack that keeps the real address
/// and returns the function's activations there (the exit probe's handler), unless the
/// innermost entry on the word is such an entry already (it returns them too).
pub(crate) fn return_through_slot(sp: u64, probes: &[Arc<KretInner>]) -> TailReturn {
    if !TAIL_RETURNS.load(Relaxed) {
        return TailReturn::Unavailable;
    }
    let Some(state) = thread_state::existing() else { return TailReturn::NoRoom };
    let t = &state.returns;
    let mut stacks = OwnStacks::at_trap(Some(state));
    // The word is where a call's return address lies, as at an entry: entries below it are
    // stale, one on it is chained if the word still holds the trampoline.
    returns::reclaim(&mut Live { t, probes }, At::Entry { sp }, &mut stacks);
    if let Some(i) = returns::innermost_at(&Live { t, probes }, sp, &mut stacks) {
        if t.stack.get(i).probe.get() == TAIL_CALLS {
            return TailReturn::Through { first: false };
        }
    }
    let ret_slot = sp as *mut u64;
    // SAFETY: at a tail call the return address the callee will return through is at the
    // stack pointer, on this thread's live stack.
    let ret = unsafe { ret_slot.read_volatile() };
    let on = stacks.stack_of(sp);
    let pushed = t.stack.push(|e| {
        e.sp.set(sp);
        e.ret.set(ret);
        e.probe.set(TAIL_CALLS);
        e.slot.set(0);
        e.stack.set(on);
    });
    if !pushed {
        return TailReturn::NoRoom;
    }
    hijacked::replaced(sp, ret, trampoline_addr());
    // SAFETY: as above.
    unsafe { ret_slot.write_volatile(trampoline_addr()) };
    TailReturn::Through { first: true }
}

// ---------------------------------------------------------------------------------------------
// The trampoline.

/// What the trampoline pushed, lowest address first.
#[repr(C)]
struct TrampolineFrame {
    saved: SavedRegs,
    /// The hijacked return-address slot itself; the trampoline's final `ret` pops it, so the
    /// dispatcher writes the real return address here.
    ret_slot: u64,
}

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_kret_trampoline",
    ".type __dprobe_kret_trampoline,@function",
    "__dprobe_kret_trampoline:",
    // The probed function's `ret` brought us here: rsp is one slot above the hijacked one.
    "push rax", // re-occupy the return-address slot (overwritten below)
    save_registers!(),
    "mov rdi, rsp",
    "mov rbx, rsp",
    "and rsp, -16",
    "call {dispatch}",
    "mov rsp, rbx",
    "mov [rsp + {ret_slot}], rax",
    restore_registers!(),
    "ret",
    ".size __dprobe_kret_trampoline, . - __dprobe_kret_trampoline",
    dispatch = sym dispatch,
    ret_slot = const SAVED_BYTES,
);

// The assembly writes the return address at this offset.
const _: () = assert!(std::mem::offset_of!(TrampolineFrame, ret_slot) == SAVED_BYTES);

extern "C" {
    fn __dprobe_kret_trampoline();
}

/// The trampoline's address: what hijacked return-address slots hold.
pub fn trampoline_addr() -> u64 {
    __dprobe_kret_trampoline as *const () as u64
}

/// Called by the trampoline with its saved registers; returns where to go.
extern "C" fn dispatch(frame: &mut TrampolineFrame) -> u64 {
    let slot_addr = &frame.ret_slot as *const u64 as u64;
    // A thread with a return pending has an entry (kept until it exits); one without may
    // return a frame another thread's entry hijacked (a coroutine resumed here).
    let Some(state) = thread_state::existing() else {
        return hijacked::returned_elsewhere(slot_addr).unwrap_or_else(|| no_return_address());
    };
    crate::abandoned::forget_left_hit_path(state, slot_addr + 8);
    // On the program's alternate stack, the hit path moves to a stack of dprobe's.
    hit_stack::off_alternate_stack(state, slot_addr + 8, || returned_here(state, frame, slot_addr))
}

/// [`dispatch`]'s work, on the stack it runs on.
fn returned_here(state: &'static ThreadState, frame: &mut TrampolineFrame, slot_addr: u64) -> u64 {
    let _hit_path = trap::HitPath::with(Some(state));
    let t = &state.returns;
    registry().read(|probes| {
        let mut stacks = OwnStacks::unknown(Some(state));
        returns::reclaim(&mut Live { t, probes }, At::Return { sp: slot_addr + 8 }, &mut stacks);
        let Some(i) = returns::innermost_at(&Live { t, probes }, slot_addr, &mut stacks) else {
            return from_grave(t, slot_addr);
        };
        let e = t.stack.get(i);
        let (ret, probe, slot) = (e.ret.get(), e.probe.get(), e.slot.get() as usize);
        if probe == TAIL_CALLS {
            // Activations of functions watched at their exits return with this callee.
            let mut regs = frame.saved.regs(real_return_address(ret, slot_addr), slot_addr + 8);
            remove_at(t, i);
            trap::enter_handler();
            exits::returned_through_slot(state, slot_addr, &mut regs, probes);
            trap::leave_handler();
            frame.saved.set(&regs, RETURN_FLAGS);
            return ret;
        }
        remove_at(t, i);
        let Some(inner) = find(probes, probe) else { return ret };
        let data = inner.data(slot);
        inner.release(slot);
        let mut regs = frame.saved.regs(ret, slot_addr + 8);
        trap::enter_handler();
        let ran = inner.returned(Some(state), &mut regs, &data);
        trap::leave_handler();
        if ran {
            frame.saved.set(&regs, RETURN_FLAGS);
            regs.rip
        } else {
            ret
        }
    })
}

/// No pending entry for this return: find the address among the reclaimed ones, or among
/// those other threads' entries replaced (a coroutine suspended in a probed function there,
/// resumed here: `hijacked.rs`). Not finding it means dprobe lost a return address it
/// hijacked, which must never happen; the program cannot continue correctly, so it stops
/// here with a message rather than jump anywhere.
fn from_grave(t: &ThreadReturns, slot_addr: u64) -> u64 {
    let n = t.grave_next.get();
    for k in (n.saturating_sub(GRAVE)..n).rev() {
        let (sp, ret) = &t.grave[k % GRAVE];
        if sp.get() == slot_addr {
            sp.set(0);
            return ret.get();
        }
    }
    hijacked::returned_elsewhere(slot_addr).unwrap_or_else(|| no_return_address())
}

/// dprobe lost a return address it hijacked: stop here with a message rather than jump anywhere.
fn no_return_address() -> ! {
    const MSG: &[u8] = b"dprobe: a return through the kretprobe trampoline has no recorded return address; aborting\n";
    // SAFETY: write to stderr and abort are async-signal-safe.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::abort()
    }
}

/// What a return handler may change: every register but the stack pointer, and of the flags
/// only the arithmetic ones (CF, PF, AF, ZF, SF, OF: what a function's result may set).
const RETURN_FLAGS: u64 = 0xcd5;

/// The real return address for a return address `addr` found at stack address `sp` while
/// unwinding the *calling thread's* stack: `addr` itself unless it is the trampoline's (kprobe
/// rule 10: what `__builtin_return_address` and unwinders would otherwise see).
pub fn real_return_address(addr: u64, sp: u64) -> u64 {
    if addr != trampoline_addr() {
        return addr;
    }
    // With several return probes on one function the slot was hijacked several times: the
    // later entries saved the trampoline's address, the first one the real address.
    let elsewhere = || hijacked::address_of(sp).unwrap_or(addr);
    let Some(state) = thread_state::existing() else { return elsewhere() };
    let t = &state.returns;
    (0..t.stack.depth())
        .rev()
        .map(|i| t.stack.get(i))
        .find(|e| e.sp.get() == sp && e.ret.get() != addr)
        .map_or_else(elsewhere, |e| e.ret.get())
}

/// Put back every return address this thread has hijacked (an unwinder is about to walk the
/// stack). Runs as the pre-handler of the probes on `_Unwind_RaiseException` and
/// `_Unwind_ForcedUnwind`.
fn restore_thread_returns() {
    let Some(state) = thread_state::existing() else { return };
    let t = &state.returns;
    registry().read(|probes| {
        while t.stack.depth() > 0 {
            let e = t.stack.get(t.stack.depth() - 1);
            let slot = e.sp.get() as *mut u64;
            // SAFETY: a pending entry's slot is on this thread's stack; if the frame is
            // still live (unwinding has not started yet), it holds the trampoline address.
            // A slot that no longer does belongs to an abandoned frame and is left alone.
            unsafe {
                if sys::read_memory(Addr(e.sp.get()), &mut [0u8; 8]).is_ok()
                    && slot.read_volatile() == trampoline_addr()
                {
                    slot.write_volatile(e.ret.get());
                }
            }
            drop_at(t, t.stack.depth() - 1, Reclaim::Unwound, probes);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Registration.

/// A registered return probe. Dropping it unregisters it.
#[must_use = "dropping the handle unregisters the probe"]
pub struct ReturnProbe {
    how: Watching,
    /// The entry probe's figures once it is unregistered.
    final_entry: Stats,
    inner: Arc<KretInner>,
    mode: ReturnMode,
    addr: Addr,
}

/// What watches a return probe's returns.
enum Watching {
    /// The exit sites of its function (shared with the other return probes there).
    Exits(Option<exits::Watched>),
    /// Its own entry probe, which replaces the return address.
    ReturnAddress(Option<Probe>),
}

impl std::fmt::Debug for ReturnProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnProbe").field("mode", &self.mode).field("stats", &self.stats()).finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static UNWIND_PROBES: Mutex<Vec<Probe>> = Mutex::new(Vec::new());

/// The unwinder-probe lock, held (see [`crate::hold_registration_locks`]).
pub(crate) fn hold_unwind_lock() -> std::sync::MutexGuard<'static, impl Sized> {
    UNWIND_PROBES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Register a return probe (the kernel's `register_kretprobe`). Its returns are watched at
/// the function's exits when they are all known, otherwise through the return address
/// ([`ReturnProbe::return_mode`] says which, and why).
pub fn register_kretprobe(probe: Kretprobe) -> Result<ReturnProbe, ProbeError> {
    if trap::in_handler() {
        return Err(ProbeError::InHandler);
    }
    let _own = trap::OwnWork::enter();
    let engine = Engine::global()?;
    let target = engine.function_entry(&probe.function)?;
    let addr = target.addr;
    let inner = Arc::new(KretInner {
        id: NEXT_ID.fetch_add(1, Relaxed),
        place: AtomicU32::new(0),
        entry: probe.entry,
        handler: probe.handler,
        pool: Instances::new(probe.maxactive),
        hits: HitCount::default(),
        nmissed: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        unwound: AtomicU64::new(0),
        last_dead_thread_scan: AtomicU64::new(0),
        handler_panicked: AtomicBool::new(false),
        entries: HitCount::default(),
        panics: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    });
    registry().update(|list| {
        let mut next = list.clone();
        next.push(inner.clone());
        next.sort_by_key(|p| p.id);
        note_places(&next);
        next
    });
    let watched = match probe.via_return_address {
        true => Err("asked for".to_string()),
        false => exits::watch(engine, addr, &target.function, &inner),
    };
    let placed = match watched {
        Ok(w) => {
            let mode = ReturnMode::Exits { sites: w.sites() };
            Ok((Watching::Exits(Some(w)), mode))
        }
        Err(why) => via_return_address(addr, &inner)
            .map(|entry| (Watching::ReturnAddress(Some(entry)), ReturnMode::ReturnAddress { why })),
    };
    match placed {
        Ok((how, mode)) => Ok(ReturnProbe { how, final_entry: Stats::default(), inner, mode, addr }),
        Err(e) => {
            remove_from_registry(inner.id);
            Err(e)
        }
    }
}

/// The entry probe of a return probe that replaces the return address.
fn via_return_address(addr: Addr, inner: &Arc<KretInner>) -> Result<Probe, ProbeError> {
    check_shadow_stack()?;
    install_unwind_probes();
    let for_entry = inner.clone();
    // The entry stays on int3: the trap tells whether the function was entered on the
    // alternate signal stack (such calls are not traced), which the jump path cannot see.
    register(
        Kprobe::addr(addr)
            .pre(move |regs| {
                on_entry(&for_entry, regs);
                PreAction::Continue
            })
            .no_optimize(),
    )
}

fn remove_from_registry(id: u64) {
    registry().update(|list| {
        let next: Vec<_> = list.iter().filter(|p| p.id != id).cloned().collect();
        note_places(&next);
        next
    });
}

/// Probes on the unwinder entry points, placed once, when the first return probe that
/// replaces return addresses is.
fn install_unwind_probes() {
    let mut probes = UNWIND_PROBES.lock().unwrap_or_else(|e| e.into_inner());
    if !probes.is_empty() {
        return;
    }
    for name in ["_Unwind_RaiseException", "_Unwind_ForcedUnwind"] {
        if let Ok(p) = register(Kprobe::symbol(name).pre(|_| {
            restore_thread_returns();
            PreAction::Continue
        })) {
            probes.push(p);
        }
    }
}

/// With a CET shadow stack, a hijacked return address would kill the process at `ret`.
fn check_shadow_stack() -> Result<(), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let shadow_stack = status.lines().any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"));
    if shadow_stack {
        return Err(ProbeError::ReturnProbesUnavailable {
            reason: "the process runs with a CET shadow stack, which forbids rewriting return addresses".into(),
        });
    }
    Ok(())
}

impl ReturnProbe {
    /// Its figures: `hits` are the calls its entry saw, `returns` the returns traced,
    /// `missed` the calls not traced for want of an instance (`maxactive` of them in flight
    /// already, or no memory to be had for one), `reentered` the calls made inside a handler, `abandoned` the
    /// instances reclaimed because their frame was abandoned (`longjmp`, an exception, a
    /// dead thread).
    pub fn stats(&self) -> Stats {
        // The finished calls are read before the entries: each call was entered before it
        // finished, so, while threads run on, the figures never show more calls finished than
        // entered (x86-64 does not reorder loads with other loads).
        let returns = self.inner.hits.get();
        let missed = self.inner.nmissed.load(Relaxed);
        let abandoned = self.inner.stale.load(Relaxed) + self.inner.unwound.load(Relaxed);
        let entry = match &self.how {
            Watching::ReturnAddress(entry) => entry.as_ref().map_or_else(|| self.final_entry.clone(), |e| e.stats()),
            Watching::Exits(w) => {
                let shared = w.as_ref().map_or_else(|| self.final_entry.clone(), exits::Watched::entry_stats);
                Stats {
                    hits: self.inner.entries.get(),
                    handler_panics: shared.handler_panics + self.inner.panics.load(Relaxed),
                    handler_faults: shared.handler_faults + self.inner.faults.load(Relaxed),
                    ..shared
                }
            }
        };
        Stats { returns, missed, abandoned, ..entry }
    }

    /// How its returns are watched, and why.
    pub fn return_mode(&self) -> &ReturnMode {
        &self.mode
    }

    /// Instances in flight now.
    pub fn pending(&self) -> u64 {
        self.inner.pending()
    }

    /// The function's address.
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The most instances it keeps in flight (`maxactive`); `None`: no fixed limit.
    pub fn maxactive(&self) -> Option<usize> {
        self.inner.pool.limit()
    }

    /// Unregister: no new call is traced, no handler runs after this returns, and the code
    /// has its original bytes back where no other probe remains. Calls in flight return
    /// correctly (through the trampoline, whose return addresses are kept per thread, when
    /// the return address was replaced), without running the handler.
    pub fn unregister(mut self) -> Result<Stats, ProbeError> {
        self.unregister_now()?;
        Ok(self.stats())
    }

    fn unregister_now(&mut self) -> Result<(), ProbeError> {
        // Refused before anything is taken, as the engine refuses it: a handler's thread may
        // be reading the lists this would change (and their writers do not wait for it).
        if trap::in_handler() {
            return Err(ProbeError::InHandler);
        }
        let _own = trap::OwnWork::enter();
        match &mut self.how {
            Watching::ReturnAddress(entry) => {
                if let Some(entry) = entry.take() {
                    // Keep the entry's figures in the totals.
                    self.final_entry = entry.unregister()?;
                    remove_from_registry(self.inner.id);
                }
            }
            Watching::Exits(w) => {
                if let Some(w) = w.take() {
                    self.final_entry = w.unwatch(self.inner.id)?;
                    remove_from_registry(self.inner.id);
                }
            }
        }
        Ok(())
    }
}

impl Drop for ReturnProbe {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `unregister` returns them.
        let _ = self.unregister_now();
    }
}
