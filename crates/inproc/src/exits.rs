//! Return probes that never touch the stack: a function whose exits are all known
//! (`dprobe_arch::find_exits`: each `ret`, each tail call, from the whole function's code) is
//! *watched*: one probe on its entry and one on each exit site, ordinary probes of the engine
//! (int3, or a jump where the engine can make one). The entry pushes an activation (the stack
//! pointer, and an instance of each return probe on the function) on the thread's exit stack;
//! an exit pairs with it by the stack pointer alone, by `dprobe_core::returns::exits`' rule,
//! the one every engine uses. No return address is read to pair or written, so exceptions,
//! `longjmp`, alternate signal stacks, recursion and code that reads its own return address
//! see the stack as the program left it; activations the program abandoned are found stale at
//! the thread's next exit below them (or entry on their word) and counted as abandoned.
//!
//! A tail call (`jmp`) into another watched function hands the caller's activation over to the
//! callee: both return at the callee's exit, innermost first, with its return value. A tail
//! call into any other function (not probed, or probed through its return address) hands it
//! over to the return address the callee returns through: that word becomes the return-probe
//! trampoline, the real address kept on the thread's pending stack of `kretprobe.rs` (whose
//! dispatcher then returns the activation, with the callee's registers, and goes on to the real
//! address; whose unwinder probes put the address back before an exception walks the stack;
//! and whose rule finds it stale after a `longjmp`). When that stack is full, the call is
//! missed; with a CET shadow stack, which forbids the trampoline, the caller's return is
//! reported at the jump, where `rax` holds no return value yet.
//!
//! Every return probe of one function shares its watch: one activation per call lists up to
//! [`PER_CALL`] of them; more on one function watch their returns through the return address.
//! A thread keeps as many pending calls as it makes: past the first 256, in chunks it maps as it
//! goes deeper (see `chunked_stack.rs`); only a chunk that cannot be mapped misses a call.
//!
//! The hit path allocates nothing from the heap and takes no lock: activations live in a table
//! mapped once (see `thread_state.rs`) and in those chunks, the probes are found through RCU
//! reads: on the jump path a plain load inside the read section the detour's dispatcher holds
//! (`jump::read_published`), with no atomic read-modify-write on a line every thread shares.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dprobe_arch::{
    analyze, emulate, endbr64_len, find_exits, straight_to_exit, Addr, CodePart, Emulation, ExecClass, ExitKind,
    MemOperand, Memory, MemoryFault, Regs, JUMP_LEN,
};
use dprobe_core::returns::exits::{self as pairing, Activations};
use dprobe_core::{Kprobe, PreAction, ProbeError, Stats};
use dprobe_rcu::Rcu;
use dprobe_sym::Function;

use crate::chunked_stack::{stack_entry, ChunkedStack};
use crate::engine::Engine;
use crate::kretprobe::{
    self, find, find_at, real_return_address, registry, trampoline_addr, EntryAction, InstanceData, KretInner,
    OwnStacks, TailReturn,
};
use crate::probe::{register_all, unregister_all, Probe};
use crate::thread_state::ThreadState;
use crate::trap::InprocMemory;
use crate::{jump, sys, thread_state};

/// The most return probes one call of a function lists.
pub const PER_CALL: usize = 4;

/// Calls of watched functions pending in a thread's table entry; deeper ones in chunks it maps.
const INLINE: usize = 256;

/// Instances a thread keeps for its next calls (see [`ExitStack::take_instance`]).
const PARKED: usize = 4;

/// How an activation left by a tail call, if it did. All zeroes is `No`.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Handed {
    /// It has not left.
    No = 0,
    /// To a watched function, whose exit returns it.
    ToCallee,
    /// Through the trampoline in its return address, which returns it: `First` is the
    /// innermost activation of its word when the trampoline was written there; those above it
    /// on the word return with it, through the same trampoline.
    ThroughSlot { first: bool },
}

impl Handed {
    fn through_slot(self) -> bool {
        matches!(self, Handed::ThroughSlot { .. })
    }
}

/// One pending call of a watched function.
struct Activation {
    /// The stack pointer at its entry (where its return address is).
    sp: Cell<u64>,
    /// Whether it left by a tail call, to return with the function it jumped to, and how.
    handed: Cell<Handed>,
    /// Its return probes: their ids, their places in the registry when taken (a hint for
    /// [`find_at`]), and instances.
    n: Cell<u8>,
    probes: [Cell<u32>; PER_CALL],
    places: [Cell<u32>; PER_CALL],
    slots: [Cell<u32>; PER_CALL],
}

stack_entry!(Activation { sp, handed, n, probes, places, slots });

impl Activation {
    /// Its return probes that are still registered, with their instances, innermost (last
    /// taken) first.
    fn probes<'a>(&'a self, probes: &'a [Arc<KretInner>]) -> impl Iterator<Item = (&'a KretInner, usize)> + 'a {
        (0..self.n.get() as usize).rev().filter_map(|k| {
            let p = find_at(probes, u64::from(self.probes[k].get()), self.places[k].get())?;
            Some((p, self.slots[k].get() as usize))
        })
    }
}

/// A thread's pending calls of watched functions, oldest first. All zeroes is empty; the
/// entries above the depth are never read before they are written.
pub(crate) struct ExitStack {
    /// Whether anything was ever pushed or parked: its pages must be given back, and its
    /// parked instances, when the thread exits.
    used: Cell<bool>,
    acts: ChunkedStack<Activation, INLINE>,
    /// Instances of unlimited pools this thread gave back at an exit and takes again at its
    /// next entry, without the pool's free stack.
    parked: [Parked; PARKED],
}

/// An instance a thread parked: its probe's id, and its slot + 1 (0: the entry is empty).
struct Parked {
    probe: Cell<u64>,
    slot: Cell<u32>,
}

impl Parked {
    /// The probe and slot, when not empty.
    fn get(&self) -> Option<(u64, usize)> {
        let slot = self.slot.get().checked_sub(1)?;
        Some((self.probe.get(), slot as usize))
    }

    fn set(&self, parked: Option<(u64, usize)>) {
        let (probe, slot) = parked.map_or((0, 0), |(p, s)| (p, s as u32 + 1));
        self.probe.set(probe);
        self.slot.set(slot);
    }
}

impl ExitStack {
    /// Whether anything was ever pushed.
    pub(crate) fn used(&self) -> bool {
        self.used.get()
    }

    fn depth(&self) -> usize {
        self.acts.depth()
    }

    fn act(&self, i: usize) -> &Activation {
        self.acts.get(i)
    }

    fn remove(&self, i: usize) {
        self.acts.remove_at(i);
    }

    /// An instance of `p` for thread `tid`: one it parked, or one from the pool.
    ///
    /// A call returns and the next one enters on the same thread, over and over: parking the
    /// instance between them spares the pool's free stack, two compare-and-swaps and an
    /// exchange per call (atomic read-modify-writes, the larger part of a return probe's cost
    /// on the jump path). Only `on_entry` and `on_exit` use the parked entries, and they never
    /// nest on one thread (a hit inside a handler runs none), so plain loads and stores do.
    fn take_instance(&self, p: &KretInner, tid: u32) -> Option<usize> {
        for entry in &self.parked {
            if let Some((_, slot)) = entry.get().filter(|(probe, _)| *probe == p.id) {
                entry.set(None);
                p.unpark(slot, tid);
                return Some(slot);
            }
        }
        p.take_or_reclaim(tid)
    }

    /// Thread `tid` is done with instance `slot` of `p`: parked for its next call where there
    /// is room (entries of probes no longer in `probes` are dropped: their pool goes with
    /// them), else given back to the pool.
    fn give_back(&self, p: &KretInner, slot: usize, tid: u32, probes: &[Arc<KretInner>]) {
        // An empty entry first: telling an entry of a probe no longer registered takes a search.
        let free = (self.parked.iter().find(|e| e.get().is_none()))
            .or_else(|| self.parked.iter().find(|e| e.get().is_some_and(|(probe, _)| find(probes, probe).is_none())));
        match free {
            Some(entry) if p.park(slot, tid) => {
                entry.set(Some((p.id, slot)));
                self.used.set(true);
            }
            _ => p.release(slot),
        }
    }

    /// The thread is gone: its parked instances go back to their pools.
    fn give_back_parked(&self, probes: &[Arc<KretInner>]) {
        for entry in &self.parked {
            let parked = entry.get();
            entry.set(None);
            if let Some((p, slot)) = parked.and_then(|(probe, slot)| Some((find(probes, probe)?, slot))) {
                p.give_back_parked(slot);
            }
        }
    }
}

/// A thread's exit stack as the pairing rule sees it: an abandoned activation gives its
/// instances back and counts as abandoned for each of its probes.
struct Pending<'a> {
    stack: &'a ExitStack,
    probes: &'a [Arc<KretInner>],
}

impl Activations for Pending<'_> {
    fn depth(&self) -> usize {
        self.stack.depth()
    }
    fn sp(&self, i: usize) -> u64 {
        self.stack.act(i).sp.get()
    }
    fn handed_over(&self, i: usize) -> bool {
        let a = self.stack.act(i);
        match a.handed.get() {
            Handed::No => false,
            Handed::ToCallee => true,
            // Still so only while the word returns through the trampoline: once a new call
            // wrote it, the frame is gone (left by `longjmp` or an exception).
            // SAFETY: the rule asks this only at an entry, of an activation on the entry's own
            // word: the return address at the stack pointer, on the thread's live stack.
            Handed::ThroughSlot { .. } => unsafe { (a.sp.get() as *const u64).read_volatile() == trampoline_addr() },
        }
    }
    fn abandon(&mut self, i: usize) {
        // A handed-over activation did leave, through a callee whose return was not seen:
        // without its registers at the jump, it counts as abandoned too.
        for (p, slot) in self.stack.act(i).probes(self.probes) {
            p.release(slot);
            p.stale.fetch_add(1, Relaxed);
        }
        self.stack.remove(i);
    }
}

/// Each return probe of a watched function, with the function's first address.
type WatchedBy = Vec<(u64, Arc<KretInner>)>;

/// The return probes of watched functions, by the function's first address, then id: what an
/// entry runs, and which tail calls hand a return over.
fn watched() -> &'static Rcu<WatchedBy> {
    static WATCHED: OnceLock<Rcu<WatchedBy>> = OnceLock::new();
    WATCHED.get_or_init(|| Rcu::with_grace(Vec::new(), jump::grace))
}

/// In a child process just forked: see [`Rcu::forget_readers_after_fork`].
pub(crate) fn forget_readers_after_fork() {
    watched().forget_readers_after_fork();
}

fn is_watched(function: u64) -> bool {
    jump::read_published(thread_state::existing(), watched(), |w| {
        w.binary_search_by_key(&function, |(f, _)| *f).is_ok()
    })
}

/// The thread owning `stack` is gone (or, in a forked child, is not there): its pending calls
/// give their instances back, counted as abandoned, and its chunks are unmapped.
pub(crate) fn thread_gone(stack: &ExitStack) {
    registry().read(|probes| {
        for i in 0..stack.depth() {
            for (p, slot) in stack.act(i).probes(probes) {
                p.release(slot);
                p.stale.fetch_add(1, Relaxed);
            }
        }
        stack.give_back_parked(probes);
    });
    stack.acts.unmap_all();
    stack.used.set(false);
}

// ---------------------------------------------------------------------------------------------
// The hit path.

/// The entry of watched function `function`: drop the activations a new call made stale, then
/// push this call's, with an instance of each of its return probes that has one free and whose
/// entry handler tracks the call.
fn on_entry(function: u64, regs: &mut Regs) {
    let state = thread_state::current();
    let stack = state.and_then(thread_state::exit_stack);
    jump::read_published(state, watched(), |all| {
        let first = all.partition_point(|(f, _)| *f < function);
        let mine = all[first..].iter().take_while(|(f, _)| *f == function).map(|(_, p)| p);
        let (Some(state), Some(stack)) = (state, stack) else {
            for p in mine {
                p.entries.add();
                p.nmissed.fetch_add(1, Relaxed);
            }
            return;
        };
        let sp = regs.rsp;
        let mut stacks = OwnStacks::at_trap(Some(state));
        let tid = state.tid();
        jump::read_published(Some(state), registry(), |probes| {
            pairing::enter(&mut Pending { stack, probes }, sp, &mut stacks);
            let act = stack.acts.next_free();
            let mut n = 0;
            for p in mine {
                // Inside handlers (the watched entry's pre-handler): never nested.
                p.entries.add_by(state.count_word());
                // An instance, where the thread has room for the call and it has room for one more.
                let taken = act.filter(|_| n < PER_CALL).and_then(|act| Some((act, stack.take_instance(p, tid)?)));
                let Some((act, slot)) = taken else {
                    p.nmissed.fetch_add(1, Relaxed);
                    continue;
                };
                let mut data = InstanceData::default();
                if p.entered(state, regs, &mut data) == EntryAction::Skip {
                    stack.give_back(p, slot, tid, probes);
                    continue;
                }
                p.set_data(slot, &data);
                act.probes[n].set(p.id as u32);
                act.places[n].set(p.place());
                act.slots[n].set(slot as u32);
                n += 1;
            }
            if let Some(act) = act.filter(|_| n > 0) {
                act.sp.set(sp);
                act.handed.set(Handed::No);
                act.n.set(n as u8);
                stack.acts.commit();
                stack.used.set(true);
            }
        })
    })
}

/// An exit site of a watched function, as its probe's handler needs it.
#[derive(Clone, Copy)]
struct ExitSite {
    kind: ExitKind,
    /// The instruction after it.
    next: Addr,
    /// A conditional tail call's branch, to tell whether it is taken.
    branch: Option<Emulation>,
    /// When a tail call's target is a PLT entry: the GOT slot it jumps through.
    plt_slot: Option<Addr>,
}

impl ExitSite {
    /// Whether the function leaves here with these registers (before the instruction runs).
    fn taken(&self, regs: &Regs) -> bool {
        let (ExitKind::TailBranch { target }, Some(branch)) = (self.kind, self.branch) else { return true };
        let mut after = *regs;
        emulate(branch, self.next, &mut after, &mut InprocMemory { rsp: regs.rsp }).is_ok() && after.rip == target.0
    }

    /// The function a tail call goes to (`None` at a `ret`).
    fn callee(&self) -> Option<u64> {
        match self.kind {
            ExitKind::Ret => None,
            ExitKind::TailJump { target } | ExitKind::TailBranch { target } => {
                Some(self.plt_slot.and_then(read_u64).unwrap_or(target.0))
            }
            ExitKind::TailJumpThrough { slot } => read_u64(slot),
        }
    }
}

fn read_u64(at: Addr) -> Option<u64> {
    let mut word = [0u8; 8];
    sys::read_memory(at, &mut word).ok().map(|()| u64::from_le_bytes(word))
}

/// An exit site was reached: if the function leaves here, the innermost activation at the
/// stack pointer returns (with those handed over to it), or is handed over to the function a
/// tail call goes to (watched: it returns at its exit; any other: through the trampoline in
/// the return address it returns through).
fn on_exit(site: &ExitSite, regs: &mut Regs) {
    let state = thread_state::existing();
    let Some(stack) = state.and_then(thread_state::exit_stack) else { return };
    if stack.depth() == 0 || !site.taken(regs) {
        return;
    }
    let callee = site.callee();
    let to_watched = callee.is_some_and(is_watched);
    let sp = regs.rsp;
    let mut stacks = OwnStacks::at_trap(state);
    jump::read_published(state, registry(), |probes| {
        let mut pending = Pending { stack, probes };
        let Some(i) = pairing::leave(&mut pending, sp, &mut stacks) else { return };
        if to_watched {
            stack.act(i).handed.set(Handed::ToCallee);
            return;
        }
        if callee.is_some() {
            match kretprobe::return_through_slot(sp, probes) {
                TailReturn::Through { first } => {
                    // The trampoline's rule may have found activations of this word stale
                    // (frames a `longjmp` left): the one leaving is found again.
                    let i = pairing::leave(&mut pending, sp, &mut stacks).expect("still pending");
                    stack.act(i).handed.set(Handed::ThroughSlot { first });
                    return;
                }
                TailReturn::NoRoom => {
                    // Its return cannot be seen with its value: missed (kprobe rule 4).
                    return_from(
                        stack,
                        i,
                        false,
                        &mut |p, slot| {
                            p.release(slot);
                            p.nmissed.fetch_add(1, Relaxed);
                        },
                        probes,
                    );
                    return;
                }
                TailReturn::Unavailable => {}
            }
        }
        returns_now(state, stack, i, regs, probes);
    })
}

/// A return made by a pre-handler at a function's first instruction, which answers the call
/// itself and moves the thread to the caller (dprobe's guard on `sigaction`,
/// `handler_masks.rs`): the function's activation at `regs.rsp` (where its return address
/// lies, as at an exit) returns as at an exit, with the registers set for it. Called before
/// the handler moves `rip` and `rsp`, while `rip` is the function's entry.
///
/// An activation of another function on that word is stale, as at any entry (its frame is
/// gone: a `posix_spawn` child's `execve` entered there, and the next child, on a stack at the
/// same place, calls this function there), and is dropped as abandoned, not returned.
pub(crate) fn returned_without_exit(regs: &mut Regs) {
    let state = thread_state::existing();
    let Some(stack) = state.and_then(thread_state::exit_stack) else { return };
    if stack.depth() == 0 {
        return;
    }
    let (sp, entry) = (regs.rsp, regs.rip);
    let mut stacks = OwnStacks::at_trap(state);
    jump::read_published(state, watched(), |all| {
        // Watched by its first byte; the probe may follow an `endbr64`.
        let this_function =
            |id: u64| all.iter().any(|(f, p)| p.id == id && (*f == entry || f.wrapping_add(ENDBR64_LEN) == entry));
        jump::read_published(state, registry(), |probes| {
            let mut pending = Pending { stack, probes };
            let Some(i) = pairing::leave(&mut pending, sp, &mut stacks) else { return };
            let act = stack.act(i);
            if (0..act.n.get() as usize).any(|k| this_function(u64::from(act.probes[k].get()))) {
                returns_now(state, stack, i, regs, probes);
            } else {
                pairing::enter(&mut pending, sp, &mut stacks);
            }
        })
    })
}

/// The length of `endbr64`, which a function's probe may follow.
const ENDBR64_LEN: u64 = 4;

/// Activation `i` returns by an exit instruction with registers `regs`, whose stack pointer
/// holds the return address: its return handlers run.
fn returns_now(
    state: Option<&'static ThreadState>,
    stack: &ExitStack,
    i: usize,
    regs: &mut Regs,
    probes: &[Arc<KretInner>],
) {
    let sp = regs.rsp;
    // What a handler sees: the registers as the function leaves, `rip` where it returns
    // to, `rsp` past the return address; in place (a copy of the frame, xmm registers
    // and all, costs more than the rest of the exit's bookkeeping). A handler may change
    // the return value and other registers, not where the instruction goes: `rip` and
    // `rsp` are put back however this ends (a panic unwinding out of it too).
    let seen = AtExit { at_exit: (regs.rip, regs.rsp), regs };
    // SAFETY: at an exit instruction the return address is at the stack pointer, on the
    // thread's live stack (below it lie the signal frame or the detour's frame).
    seen.regs.rip = real_return_address(unsafe { (sp as *const u64).read_volatile() }, sp);
    seen.regs.rsp = sp.wrapping_add(8);
    let tid = state.map_or(0, |s| s.tid());
    let mut each = |p: &KretInner, slot| {
        let data = p.data(slot);
        stack.give_back(p, slot, tid, probes);
        p.returned(state, seen.regs, &data);
    };
    return_from(stack, i, false, &mut each, probes);
}

/// An exit's registers as its return handlers see them, where the exit instruction's `rip`
/// and stack pointer come back when it is dropped.
struct AtExit<'a> {
    at_exit: (u64, u64),
    regs: &'a mut Regs,
}

impl Drop for AtExit<'_> {
    fn drop(&mut self) {
        (self.regs.rip, self.regs.rsp) = self.at_exit;
    }
}

/// A return probe's instance `slot` returns with registers `seen`.
fn returned(state: Option<&ThreadState>, p: &KretInner, slot: usize, seen: &mut Regs) {
    let data = p.data(slot);
    p.release(slot);
    p.returned(state, seen, &data);
}

/// Activation `i` returns, and with it those handed over to it on its word, innermost first:
/// `each` is given every return probe's instance of theirs. At an exit (`through_slot` false)
/// they stop before the ones the trampoline in the word returns (other returns through it
/// may come first); through the trampoline, they stop after the first one it was written for.
fn return_from(
    stack: &ExitStack,
    i: usize,
    through_slot: bool,
    each: &mut impl FnMut(&KretInner, usize),
    probes: &[Arc<KretInner>],
) {
    let sp = stack.act(i).sp.get();
    let mut j = i;
    loop {
        let handed = stack.act(j).handed.get();
        for (p, slot) in stack.act(j).probes(probes) {
            each(p, slot);
        }
        stack.remove(j);
        if through_slot && handed == (Handed::ThroughSlot { first: true }) {
            break;
        }
        match j.checked_sub(1).map(|below| (below, stack.act(below))) {
            Some((below, a))
                if a.sp.get() == sp
                    && a.handed.get() != Handed::No
                    && (through_slot || !a.handed.get().through_slot()) =>
            {
                j = below
            }
            _ => break,
        }
    }
}

/// The innermost activation on word `slot` handed over to it (an activation of a function
/// entered there whose return was not seen may lie above it), with the thread's exit stack.
fn handed_over_at(slot: u64) -> Option<(&'static ExitStack, usize)> {
    let stack = thread_state::existing().and_then(thread_state::exit_stack)?;
    let i = (0..stack.depth())
        .rev()
        .take_while(|&k| stack.act(k).sp.get() <= slot)
        .find(|&k| stack.act(k).sp.get() == slot && stack.act(k).handed.get() != Handed::No)?;
    Some((stack, i))
}

/// The trampoline in return-address slot `slot` was returned through, with registers `seen`
/// (`rip` the real return address, `rsp` past the slot): the activations it was written for
/// return, with those handed over to them since (see [`return_from`]).
pub(crate) fn returned_through_slot(
    state: &'static ThreadState,
    slot: u64,
    seen: &mut Regs,
    probes: &[Arc<KretInner>],
) {
    let Some(stack) = thread_state::exit_stack(state) else { return };
    let mut stacks = OwnStacks::unknown(Some(state));
    let mut pending = Pending { stack, probes };
    // Frames below the slot are gone.
    if pairing::leave(&mut pending, slot, &mut stacks).is_none() {
        return;
    }
    let Some((_, first)) = handed_over_at(slot) else { return };
    // Activations above it on the word are of functions that returned through it unseen.
    for k in (first + 1..stack.depth()).rev() {
        if stack.act(k).sp.get() == slot {
            pending.abandon(k);
        }
    }
    return_from(stack, first, true, &mut |p, slot| returned(Some(state), p, slot, seen), probes);
}

/// The trampoline in return-address slot `slot` will not be returned through (its frame was
/// abandoned, or an unwinder got the real address back): the activations it was written for
/// are abandoned.
pub(crate) fn abandon_through_slot(slot: u64, probes: &[Arc<KretInner>]) {
    let Some((stack, mut j)) = handed_over_at(slot) else { return };
    let mut pending = Pending { stack, probes };
    loop {
        let handed = stack.act(j).handed.get();
        pending.abandon(j);
        if handed == (Handed::ThroughSlot { first: true }) {
            break;
        }
        match j.checked_sub(1) {
            Some(below) if stack.act(below).sp.get() == slot && stack.act(below).handed.get() != Handed::No => {
                j = below
            }
            _ => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration.

/// A watched function's probes.
struct Watch {
    /// Its entry probe first, then one per exit site.
    probes: Vec<Probe>,
    /// Return probes using it.
    users: usize,
    sites: usize,
}

static WATCHES: Mutex<BTreeMap<u64, Watch>> = Mutex::new(BTreeMap::new());

/// The watch lock, held (see [`crate::hold_registration_locks`]).
pub(crate) fn hold_lock() -> MutexGuard<'static, impl Sized> {
    WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A return probe's share of its function's watch.
pub(crate) struct Watched {
    function: u64,
    sites: usize,
}

/// Watch the returns of function `f`, whose entry is `entry`, for return probe `inner`, at its
/// exits; `Err` says why they cannot be (the return address is replaced then).
pub(crate) fn watch(engine: &Engine, entry: Addr, f: &Function, inner: &Arc<KretInner>) -> Result<Watched, String> {
    let mut watches = hold_lock_inner();
    if !thread_state::exit_stacks_mapped() {
        return Err("the threads' tables of pending calls could not be mapped".into());
    }
    let code = engine.function_code(f).map_err(|e| format!("the function's code cannot be read: {e}"))?;
    let function = code[0].0 .0;
    let sharing = watched().read(|w| w.iter().filter(|(f, _)| *f == function).count());
    if let Some(w) = watches.get_mut(&function) {
        if sharing >= PER_CALL {
            return Err(format!(
                "{PER_CALL} return probes watch the function's exits already, the most one call lists"
            ));
        }
        w.users += 1;
        add_watched(function, inner);
        return Ok(Watched { function, sites: w.sites });
    }
    let parts: Vec<CodePart<'_>> = code.iter().map(|(start, bytes)| CodePart { start: *start, code: bytes }).collect();
    let exits =
        find_exits(&parts, &mut OwnMemory).map_err(|e| format!("the function's exits are not all known: {e}"))?;
    if exits.sites.iter().any(|s| s.kind != ExitKind::Ret) {
        // Its tail calls into functions whose exits are not watched return through the
        // trampoline (where it cannot be had, they are reported at the jump).
        kretprobe::enable_tail_returns();
    }
    // Exits the entry's own jump covers, reached straight from the entry (`_setjmp`'s tail
    // call): the entry's probe takes their part.
    let mut at_entry = Vec::new();
    let mut kprobes = Vec::with_capacity(exits.sites.len() + 1);
    for s in &exits.sites {
        let part = parts.iter().find(|p| s.addr >= p.start && s.addr.0 < p.start.0 + p.code.len() as u64);
        let insn = part.and_then(|p| analyze(p.code, p.start, s.addr).ok());
        let branch = match insn.as_ref().map(|i| i.class) {
            Some(ExecClass::Emulate { emulation, .. }) => Some(emulation),
            _ => None,
        };
        let target = match s.kind {
            ExitKind::TailJump { target } | ExitKind::TailBranch { target } => Some(target),
            _ => None,
        };
        let site = ExitSite {
            kind: s.kind,
            next: insn.as_ref().map_or(s.addr, |i| i.next()),
            branch,
            plt_slot: target.and_then(plt_slot),
        };
        if matches!(s.kind, ExitKind::TailBranch { .. }) && site.branch.is_none() {
            return Err(format!("the conditional tail call at {} cannot be evaluated", s.addr));
        }
        if exit_at_entry(&parts, entry, s) {
            at_entry.push((s.addr, site));
            continue;
        }
        kprobes.push(Kprobe::addr(s.addr).pre(move |regs| {
            on_exit(&site, regs);
            PreAction::Continue
        }));
    }
    // The entry's probe first (its figures are the watch's, `entry_figures`).
    kprobes.insert(
        0,
        Kprobe::addr(entry).pre(move |regs| {
            on_entry(function, regs);
            for (at, site) in &at_entry {
                let rip = std::mem::replace(&mut regs.rip, at.0);
                on_exit(site, regs);
                regs.rip = rip;
            }
            PreAction::Continue
        }),
    );
    // The return probe is listed once every site is armed, not before: an entry seen while
    // an exit is not armed yet would push an activation that no exit pops, and the next call
    // on its stack word would find it stale (abandoned). Its entry may be live before its exits
    // (`int3`s are written in address order; a site that is a jump already, an entry probe's,
    // gets the new list at once).
    let probes = register_all(kprobes).map_err(|e| format!("its exits cannot all be probed: {e}"))?;
    add_watched(function, inner);
    let sites = exits.sites.len();
    watches.insert(function, Watch { probes, users: 1, sites });
    Ok(Watched { function, sites })
}

/// Whether exit `s` is a tail call the entry's jump covers (it starts within the entry's first
/// five bytes), reached from the entry by instructions that touch only registers: there a probe
/// of its own would keep the entry, or itself, on `int3` (a thread that calls the function
/// with every signal blocked, as a new thread calls `_setjmp`, would be killed by the trap),
/// and every call leaves through it, with the stack pointer and return address the entry
/// sees. The entry's probe then does its part ([`straight_to_exit`]).
fn exit_at_entry(parts: &[CodePart<'_>], entry: Addr, s: &dprobe_arch::ExitSite) -> bool {
    let unconditional = matches!(s.kind, ExitKind::TailJump { .. } | ExitKind::TailJumpThrough { .. });
    let covered = s.addr.0 >= entry.0 && s.addr.0 < entry.0 + JUMP_LEN as u64;
    unconditional
        && covered
        && parts.iter().any(|p| {
            entry.0 >= p.start.0
                && (entry.0 - p.start.0) < p.code.len() as u64
                && straight_to_exit(p.code, p.start, entry, s.addr)
        })
}

fn hold_lock_inner() -> MutexGuard<'static, BTreeMap<u64, Watch>> {
    WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

fn add_watched(function: u64, inner: &Arc<KretInner>) {
    watched().update(|w| {
        let mut next = w.clone();
        next.push((function, inner.clone()));
        next.sort_by_key(|(f, p)| (*f, p.id));
        next
    });
}

fn remove_watched(id: u64) {
    watched().update(|w| w.iter().filter(|(_, p)| p.id != id).cloned().collect());
}

/// When `target` is a PLT entry (`[endbr64;] jmp *GOT(%rip)`): the GOT slot it jumps through.
fn plt_slot(target: Addr) -> Option<Addr> {
    let mut code = [0u8; 24];
    sys::read_memory(target, &mut code).ok()?;
    let skip = endbr64_len(&code);
    let at = target.offset(skip as u64);
    match analyze(&code[skip..], at, at).ok()?.class {
        ExecClass::Emulate {
            emulation: Emulation::JmpMem { mem: MemOperand { base: None, index: None, disp, .. } },
            ..
        } => Some(Addr(disp)),
        _ => None,
    }
}

impl Watched {
    /// How many exit sites the function has.
    pub(crate) fn sites(&self) -> usize {
        self.sites
    }

    /// The figures of the watch's entry probe (shared by the return probes on the function),
    /// with the breakpoints put back at its entry and at every exit.
    pub(crate) fn entry_stats(&self) -> Stats {
        let watches = hold_lock_inner();
        watches.get(&self.function).map(|w| entry_figures(&w.probes)).unwrap_or_default()
    }

    /// Return probe `id` stops watching; the last one removes the watch's probes (the code
    /// has its original bytes back). Returns the entry probe's last figures.
    pub(crate) fn unwatch(self, id: u64) -> Result<Stats, ProbeError> {
        let mut watches = hold_lock_inner();
        remove_watched(id);
        let Some(w) = watches.get_mut(&self.function) else { return Ok(Stats::default()) };
        let entry = entry_figures(&w.probes);
        w.users -= 1;
        if w.users == 0 {
            let w = watches.remove(&self.function).expect("present");
            unregister_all(w.probes)?;
        }
        Ok(entry)
    }
}

/// The figures of a watch's entry probe (the first of `probes`), with the breakpoints put back
/// at each of its sites (`Stats::rearmed`, see `rearm.rs`): an exit's counts as the probe's.
fn entry_figures(probes: &[Probe]) -> Stats {
    let rearmed = probes.iter().map(|p| p.stats().rearmed).sum();
    Stats { rearmed, ..probes.first().map(Probe::stats).unwrap_or_default() }
}

/// The process's own memory, read without faulting (jump tables).
struct OwnMemory;

impl Memory for OwnMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        sys::read_memory(addr, buf)
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}
