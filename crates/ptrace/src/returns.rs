//! Return probes across processes. At a return probe's entry the return address on the
//! thread's stack is replaced and remembered:
//!
//! - with the trampoline (one `int3` in the out-of-line page): when the function returns
//!   there, the thread stops, the return handlers run with its registers, and it goes on at
//!   the real return address;
//! - or, for probes that do not need the stopped thread ([`crate::ProbeDef::no_return_stop`]),
//!   with a return stub that records the return value and time without stopping (see
//!   `stubs`); the handlers run when the tracer collects the record.
//!
//! Which pending returns are still alive is `dprobe_core::returns`' rule, the one every
//! engine uses: stacks are told apart by the mapping that holds them (an alternate signal
//! stack is not the thread's own), a pending return below the current slot on the same stack
//! was abandoned (`longjmp`, an exception), and an entry whose return slot is still hijacked
//! was reached by a tail call and returns with its caller. There is no limit on pending
//! returns unless `maxactive` sets one.
//!
//! Should the rule ever drop a return whose frame is alive (a program that keeps its
//! alternate signal stack inside its own stack mapping, or switches stacks by itself), the
//! program still returns correctly: a dropped trampoline return is remembered for a while,
//! and a dropped stub's record is not reused while the stack slot still points at it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_core::returns::{At, Instance, ReturnStack, StackNames, ThreadStacks};
use dprobe_core::ProbeId;
use dprobe_sym::read_maps_of;

use crate::error::TraceError;
use crate::probes::{file_base, Hit, HitKind};
use crate::stubs::{self, Stubs};
use crate::sys::{self, RemoteMemory};
use crate::tracee::Tracee;

/// What the tracer keeps with one probe's pending return.
#[derive(Clone)]
pub(crate) struct Pending {
    probe: ProbeId,
    function: Addr,
    entered: Instant,
    entered_tsc: u64,
    fs_base: u64,
    entry_regs: Regs,
    /// The return stub's record, when the return does not stop.
    record: Option<usize>,
    /// Which entry pushed it (probes on one function share an entry).
    entry: u64,
}

/// How many dropped trampoline returns a thread remembers.
const GRAVE: usize = 64;

/// One thread's pending returns.
#[derive(Default)]
struct ThreadReturns {
    pending: ReturnStack<Pending>,
    /// `(slot, real return address)` of trampoline returns the rule dropped, newest last.
    grave: VecDeque<(u64, u64)>,
    /// `(slot, real return address)` of functions watched at their exits that left by a tail
    /// call into a function whose returns are not watched: the trampoline in their return
    /// address shows where (and with what value) the callee returns for them.
    tail: Vec<(u64, u64)>,
    /// Pending returns whose real addresses went back when the thread entered an unwinder,
    /// oldest first: those of frames the exception does not unwind are watched again where
    /// it is caught, the others are abandoned.
    unwound: Vec<Instance<Pending>>,
}

/// Pending returns, per thread.
#[derive(Default)]
pub(crate) struct Returns {
    by_thread: HashMap<i32, ThreadReturns>,
    /// The thread of each taken stub record.
    owner: HashMap<usize, i32>,
    /// Records of dropped returns whose stack slot still held the stub: `(record, thread,
    /// slot, real return address)`, released once the slot no longer points at the stub.
    quarantine: Vec<(usize, i32, u64, u64)>,
    pub(crate) stacks: StackMaps,
    entries: u64,
}

/// Which mapping holds an address, from a copy of the process's maps read again when an
/// address is not in it. A stack is named by its mapping's end, which stays put as the stack
/// grows down.
#[derive(Default)]
pub(crate) struct StackMaps {
    ranges: Vec<(u64, u64)>,
}

impl StackMaps {
    fn find(&self, addr: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, end)| end <= addr);
        self.ranges.get(i).filter(|&&(start, _)| start <= addr).map(|&(_, end)| end)
    }

    pub(crate) fn stack_of(&mut self, pid: i32, addr: u64) -> u64 {
        if let Some(end) = self.find(addr) {
            return end;
        }
        self.read(pid);
        self.find(addr).unwrap_or(0)
    }

    /// Whether `a` and `b` lie in one mapping of process `pid` now (its maps read again: the
    /// copy may be out of date, a stack unmapped and others mapped where it was).
    pub(crate) fn same_stack_now(&mut self, pid: i32, a: u64, b: u64) -> bool {
        self.read(pid);
        self.find(a) == self.find(b)
    }

    fn read(&mut self, pid: i32) {
        if let Ok(maps) = read_maps_of(pid as u32) {
            self.ranges = maps.iter().map(|m| (m.start.0, m.end.0)).collect();
            self.ranges.sort_unstable();
        }
    }

    /// The stacks of process `pid`, named for the rule of returns watched at exits.
    pub(crate) fn of(&mut self, pid: i32) -> ProcessStacks<'_> {
        ProcessStacks { pid, maps: self }
    }
}

/// A process's stacks as the rule of returns watched at exits asks of them.
pub(crate) struct ProcessStacks<'a> {
    pid: i32,
    maps: &'a mut StackMaps,
}

impl StackNames for ProcessStacks<'_> {
    fn stack_of(&mut self, addr: u64) -> u64 {
        self.maps.stack_of(self.pid, addr)
    }

    fn same_stack(&mut self, a: u64, b: u64) -> bool {
        self.maps.same_stack_now(self.pid, a, b)
    }
}

/// The rule's questions, answered from the stopped thread's process.
struct View<'a> {
    pid: i32,
    stacks: &'a mut StackMaps,
    memory: &'a mut RemoteMemory,
    trampoline: Option<Addr>,
    stubs: &'a Stubs,
}

impl StackNames for View<'_> {
    fn stack_of(&mut self, addr: u64) -> u64 {
        self.stacks.stack_of(self.pid, addr)
    }

    fn same_stack(&mut self, a: u64, b: u64) -> bool {
        self.stacks.same_stack_now(self.pid, a, b)
    }
}

impl ThreadStacks for View<'_> {
    fn hijacked(&mut self, slot: u64) -> bool {
        read_word(self.memory, slot).is_some_and(|w| Some(Addr(w)) == self.trampoline || self.stubs.contains(Addr(w)))
    }
}

fn read_word(memory: &mut dyn Memory, addr: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    memory.read(Addr(addr), &mut word).ok().map(|()| u64::from_le_bytes(word))
}

/// Instances that return together, in the order their handlers run: the innermost entry
/// first, probes of one entry in the order they were placed.
fn handler_order(mut returning: Vec<Instance<Pending>>) -> Vec<Instance<Pending>> {
    returning.reverse();
    returning.sort_by_key(|i| std::cmp::Reverse(i.data.entry));
    returning
}

impl Returns {
    /// Forget everything (a new program image).
    pub fn clear(&mut self) {
        self.by_thread.clear();
        self.owner.clear();
        self.quarantine.clear();
        self.stacks = StackMaps::default();
    }

    /// The slots of thread `tid`'s stack that hold a trampoline or a stub, with the real
    /// return address each stands for.
    pub fn hijacked(&self, tid: i32) -> Vec<(u64, u64)> {
        let Some(thread) = self.by_thread.get(&tid) else { return Vec::new() };
        let pending = thread.pending.iter().map(|i| (i.slot, i.ret));
        pending.chain(thread.grave.iter().copied()).chain(thread.tail.iter().copied()).collect()
    }

    /// Put the real return addresses back into the stack of thread `tid`, in `memory` (the
    /// process's, at detach, or a forked child's, which inherits the hijacked stack).
    pub fn restore_stack(&self, tid: i32, trampoline: Option<Addr>, stubs: &Stubs, memory: &mut dyn Memory) {
        let Some(thread) = self.by_thread.get(&tid) else { return };
        let pending = thread.pending.iter().map(|i| {
            let hijacked = match i.data.record {
                Some(index) => Some(stubs.stub(index)),
                None => trampoline,
            };
            (i.slot, i.ret, hijacked)
        });
        let dropped = thread.grave.iter().chain(&thread.tail).map(|&(slot, ret)| (slot, ret, trampoline));
        let quarantined = self
            .quarantine
            .iter()
            .filter(|q| q.1 == tid)
            .map(|&(index, _, slot, ret)| (slot, ret, Some(stubs.stub(index))));
        for (slot, ret, hijacked) in pending.chain(dropped).chain(quarantined) {
            if hijacked.is_some() && read_word(memory, slot).map(Addr) == hijacked {
                let _ = memory.write(Addr(slot), &ret.to_le_bytes());
            }
        }
    }
}

impl Returns {
    /// A followed fork child's share of thread `parent`'s pending returns: its copy of that
    /// thread (`child`, its only one) returns through the same hijacked slots of its copy of
    /// the stack, into its copies of the trampoline and stubs. The child's returns are
    /// watched as the parent's are; what the parent's rule had dropped goes back to the real
    /// address in `memory`, the child's.
    pub(crate) fn carry_into_fork(&self, parent: i32, child: i32, stubs: &Stubs, memory: &mut dyn Memory) -> Returns {
        let mut carried = Returns { entries: self.entries, ..Returns::default() };
        let Some(thread) = self.by_thread.get(&parent) else { return carried };
        for &(slot, ret) in thread.grave.iter().chain(&thread.tail) {
            let _ = memory.write(Addr(slot), &ret.to_le_bytes());
        }
        for &(index, _, slot, ret) in self.quarantine.iter().filter(|q| q.1 == parent) {
            if read_word(memory, slot) == Some(stubs.stub(index).0) {
                let _ = memory.write(Addr(slot), &ret.to_le_bytes());
            }
        }
        for i in thread.pending.iter() {
            if let Some(index) = i.data.record {
                carried.owner.insert(index, child);
            }
        }
        let mine = ThreadReturns { pending: thread.pending.clone(), ..ThreadReturns::default() };
        carried.by_thread.insert(child, mine);
        carried
    }

    /// The probes of thread `tid`'s pending returns, one per return.
    pub(crate) fn pending_probes(&self, tid: i32) -> Vec<ProbeId> {
        self.by_thread.get(&tid).map_or_else(Vec::new, |t| t.pending.iter().map(|i| i.data.probe).collect())
    }
}

impl Tracee {
    /// A dropped pending return: counted against its probe, its record given back unless the
    /// stack may still return through it (`thread_alive`).
    fn abandon(&mut self, tid: i32, gone: Instance<Pending>, thread_alive: bool) {
        if let Some(probe) = self.probes.get_mut(&gone.data.probe) {
            probe.pool.give_back();
            probe.stats.abandoned += 1;
        }
        let Some(index) = gone.data.record else {
            if thread_alive {
                let thread = self.returns.by_thread.entry(tid).or_default();
                if !thread.grave.contains(&(gone.slot, gone.ret)) {
                    if thread.grave.len() == GRAVE {
                        thread.grave.pop_front();
                    }
                    thread.grave.push_back((gone.slot, gone.ret));
                }
            }
            return;
        };
        if self.returns.owner.remove(&index).is_none() {
            return; // another probe of the same entry gave it back already
        }
        let stub = self.stubs.stub(index);
        if thread_alive && read_word(&mut self.memory, gone.slot) == Some(stub.0) {
            self.returns.quarantine.push((index, tid, gone.slot, gone.ret));
        } else {
            self.stubs.release(index);
        }
    }

    /// Give back quarantined records whose slots no longer point at their stubs.
    fn sweep_quarantine(&mut self) {
        let quarantine = std::mem::take(&mut self.returns.quarantine);
        for q in quarantine {
            if read_word(&mut self.memory, q.2) == Some(self.stubs.stub(q.0).0) {
                self.returns.quarantine.push(q);
            } else {
                self.stubs.release(q.0);
            }
        }
    }

    /// A thread exited: its pending returns will never come.
    pub(crate) fn forget_thread_returns(&mut self, tid: i32) {
        self.forget_thread_activations(tid);
        let Some(mut thread) = self.returns.by_thread.remove(&tid) else { return };
        for gone in thread.pending.drain().into_iter().chain(thread.unwound) {
            self.abandon(tid, gone, false);
        }
        let (theirs, others) = std::mem::take(&mut self.returns.quarantine).into_iter().partition(|q| q.1 == tid);
        self.returns.quarantine = others;
        let theirs: Vec<(usize, i32, u64, u64)> = theirs;
        for (index, ..) in theirs {
            self.stubs.release(index);
        }
    }

    /// Thread `tid` entered an unwinder (a C++ exception, a Rust panic, thread
    /// cancellation), which reads the return addresses on its stack to find each frame's
    /// unwind information (none for dprobe's trampoline or stubs): every address the thread
    /// has hijacked goes back before it walks the stack. Those pending returns are counted as
    /// abandoned: the frames may be unwound, or return untraced (as the in-process engine
    /// does).
    pub(crate) fn unwinding(&mut self, tid: i32) {
        let trampoline = self.xol.trampoline_addr();
        self.collect_returns();
        self.unwinding_over(tid);
        self.returns.restore_stack(tid, trampoline, &self.stubs, &mut self.memory);
        let Some(thread) = self.returns.by_thread.get_mut(&tid) else { return };
        let mut all = thread.pending.drain();
        all.reverse();
        thread.unwound = all;
        // Dropped returns are restored: nothing is left to return through the trampoline.
        thread.grave.clear();
        thread.tail.clear();
    }

    /// Thread `tid` catches an exception (it entered `__cxa_begin_catch`, with stack pointer
    /// `sp`): the frames above it were not unwound, and their returns are watched again (the
    /// trampoline or their stub back in their slots); the others are abandoned.
    pub(crate) fn caught(&mut self, tid: i32, sp: u64) -> Result<(), TraceError> {
        let trampoline = self.xol.trampoline_addr();
        let Some(thread) = self.returns.by_thread.get_mut(&tid) else { return Ok(()) };
        let unwound = std::mem::take(&mut thread.unwound);
        let mut since = thread.pending.drain();
        since.reverse();
        let mut alive = Vec::new();
        for i in unwound {
            let hijack = match i.data.record {
                Some(index) => Some(self.stubs.stub(index).0),
                None => trampoline.map(|t| t.0),
            };
            let now = read_word(&mut self.memory, i.slot);
            let keep = i.slot > sp && hijack.is_some() && (now == Some(i.ret) || now == hijack);
            if keep {
                self.memory.write(Addr(i.slot), &hijack.expect("checked").to_le_bytes())?;
                alive.push(i);
            } else {
                self.abandon(tid, i, false);
            }
        }
        let thread = self.returns.by_thread.entry(tid).or_default();
        for i in alive.into_iter().chain(since) {
            thread.pending.push(i.slot, i.stack, i.ret, i.data);
        }
        Ok(())
    }

    /// Thread `tid` did something other than unwinding or catching since it entered an
    /// unwinder (the exception was caught without `__cxa_begin_catch`, a Rust panic for
    /// one): the returns it had pending then are abandoned, whichever frames survived.
    pub(crate) fn unwinding_over(&mut self, tid: i32) {
        let Some(thread) = self.returns.by_thread.get_mut(&tid) else { return };
        for i in std::mem::take(&mut thread.unwound) {
            self.abandon(tid, i, false);
        }
    }

    /// The process executed a new program: every pending return is gone with the old image
    /// (counted as abandoned, including returns a stub recorded after the last stop: the old
    /// memory cannot be read any more).
    pub(crate) fn forget_all_returns(&mut self) {
        self.forget_all_activations();
        let threads: Vec<i32> = self.returns.by_thread.keys().copied().collect();
        for tid in threads {
            self.forget_thread_returns(tid);
        }
        self.returns.clear();
    }

    /// At the entry of a function with return probes: drop pending returns of frames the
    /// program abandoned, then hijack the return address for each probe with room (or join
    /// the pending return of the caller that tail-called this function).
    pub(crate) fn hijack_return(
        &mut self,
        tid: i32,
        regs: &Regs,
        fs_base: u64,
        function: Addr,
        probe_ids: &[ProbeId],
    ) -> Result<(), TraceError> {
        let sp = regs.rsp;
        let trampoline = self.xol.trampoline_addr();
        let Returns { by_thread, stacks, .. } = &mut self.returns;
        let mut view = View { pid: self.pid, stacks, memory: &mut self.memory, trampoline, stubs: &self.stubs };
        let thread = by_thread.entry(tid).or_default();
        let stale = thread.pending.reclaim(At::Entry { sp }, &mut view);
        let chained = thread.pending.chained(sp, &mut view).map(|i| (i.ret, i.data.record));
        let stack = view.stack_of(sp);
        for gone in stale {
            self.abandon(tid, gone, true);
        }
        let with_room: Vec<ProbeId> = probe_ids
            .iter()
            .copied()
            .filter(|id| {
                let Some(probe) = self.probes.get_mut(id) else { return false };
                if probe.def.on_return.is_none() {
                    return false;
                }
                if !probe.pool.take() {
                    probe.stats.missed += 1;
                    return false;
                }
                true
            })
            .collect();
        if with_room.is_empty() {
            return Ok(());
        }
        let no_stop = with_room.iter().all(|id| self.probes[id].def.no_return_stop);
        let (real, record) = match chained {
            // A tail call: the slot already returns through the caller's stub or trampoline.
            Some((real, Some(index))) if no_stop => (Addr(real), Some(index)),
            Some((real, Some(index))) => {
                // This return needs a stop: the whole chain returns through the trampoline.
                self.write_trampoline(sp)?;
                for i in self.returns.by_thread.entry(tid).or_default().pending.at_slot_mut(sp) {
                    i.data.record = None;
                }
                if self.returns.owner.remove(&index).is_some() {
                    self.stubs.release(index);
                }
                (Addr(real), None)
            }
            Some((real, None)) => (Addr(real), None),
            None => {
                let mut word = [0u8; 8];
                self.memory.read(Addr(sp), &mut word)?;
                let real = Addr(u64::from_le_bytes(word));
                if !self.stubs.has_free() && no_stop {
                    self.sweep_quarantine();
                }
                match no_stop.then(|| self.stubs.take(tid, &mut self.memory)) {
                    Some(Ok(index)) => {
                        self.stubs.arm(self.pid, index, real, Addr(sp))?;
                        self.returns.owner.insert(index, tid);
                        (real, Some(index))
                    }
                    Some(Err(e)) if e.is_gone() => return Err(e),
                    // No room for another stub page (or no stub wanted): the trampoline
                    // needs none, so the return is still watched, with a stop.
                    Some(Err(_)) | None => {
                        self.write_trampoline(sp)?;
                        (real, None)
                    }
                }
            }
        };
        let (entered, entered_tsc) = (Instant::now(), stubs::tsc());
        self.returns.entries += 1;
        let entry = self.returns.entries;
        let thread = self.returns.by_thread.entry(tid).or_default();
        for probe in with_room {
            let data = Pending { probe, function, entered, entered_tsc, fs_base, entry_regs: *regs, record, entry };
            thread.pending.push(sp, stack, real.0, data);
        }
        Ok(())
    }

    /// At a tail call (thread `tid` about to jump, `rsp` at its return address) from a
    /// function watched at its exits into one whose returns are not watched: the return
    /// address becomes the trampoline, so that the caller's return is seen where the callee
    /// returns, with the callee's value. True as well when an earlier tail call through the
    /// same frame watches the slot already (a loop `f -> g -> f`: the activations all return
    /// where the last callee does). False (and nothing written) without a trampoline, or
    /// when a return probe watches that slot.
    pub(crate) fn watch_return_of_tail_call(&mut self, tid: i32, rsp: u64) -> bool {
        let Some(trampoline) = self.xol.trampoline_addr() else { return false };
        let tail = self.returns.by_thread.get(&tid).is_some_and(|t| t.tail.iter().any(|&(slot, _)| slot == rsp));
        if tail {
            return read_word(&mut self.memory, rsp) == Some(trampoline.0);
        }
        if self.returns.hijacked(tid).iter().any(|&(slot, _)| slot == rsp) {
            return false;
        }
        let Some(real) = read_word(&mut self.memory, rsp) else { return false };
        if real == trampoline.0 || self.memory.write(Addr(rsp), &trampoline.0.to_le_bytes()).is_err() {
            return false;
        }
        let pid = self.pid;
        let Returns { by_thread, stacks, .. } = &mut self.returns;
        let stack = stacks.stack_of(pid, rsp);
        let thread = by_thread.entry(tid).or_default();
        // Slots below this one on the same stack belong to frames that are gone (left by
        // longjmp or an exception): the program has written over them.
        thread.tail.retain(|&(slot, _)| slot > rsp || stacks.stack_of(pid, slot) != stack);
        thread.tail.push((rsp, real));
        true
    }

    fn write_trampoline(&mut self, slot: u64) -> Result<(), TraceError> {
        let trampoline = self.xol.trampoline_addr().ok_or(TraceError::NoTrampoline)?;
        Ok(self.memory.write(Addr(slot), &trampoline.0.to_le_bytes())?)
    }

    /// Thread `tid` stopped on the trampoline (`r.rip` is just past its `int3`): run the
    /// return handlers and send it on to the real return address.
    pub(crate) fn on_return_trap(
        &mut self,
        tid: i32,
        r: &mut libc::user_regs_struct,
        run_handlers: bool,
    ) -> Result<(), TraceError> {
        let trampoline = self.xol.trampoline_addr();
        let Returns { by_thread, stacks, .. } = &mut self.returns;
        let mut view = View { pid: self.pid, stacks, memory: &mut self.memory, trampoline, stubs: &self.stubs };
        let thread = by_thread.entry(tid).or_default();
        let (stale, returning) = thread.pending.pop_for(r.rsp, &mut view);
        let slot = r.rsp.wrapping_sub(8);
        let from_grave = match returning.first() {
            Some(_) => None,
            None => match thread.tail.iter().rposition(|t| t.0 == slot) {
                Some(i) => Some(thread.tail.remove(i)),
                None => thread.grave.iter().rposition(|g| g.0 == slot).and_then(|i| thread.grave.remove(i)),
            },
        };
        for gone in stale {
            self.abandon(tid, gone, true);
        }
        let real = match (returning.first(), from_grave) {
            (Some(i), _) => i.ret,
            (None, Some((_, ret))) => ret,
            (None, None) => return Err(TraceError::LostReturn { tid }),
        };
        let mut regs = sys::to_regs(r);
        regs.rip = real;
        for i in handler_order(returning) {
            let elapsed = i.data.entered.elapsed();
            self.run_return(&i, tid, &mut regs, elapsed, run_handlers);
        }
        self.returned_through_slot(tid, &mut regs);
        sys::from_regs(&regs, r);
        Ok(())
    }

    fn run_return(&mut self, i: &Instance<Pending>, tid: i32, regs: &mut Regs, elapsed: Duration, run_handler: bool) {
        let pid = self.process_of(tid);
        let p = &i.data;
        let Some(probe) = self.probes.get_mut(&p.probe) else { return };
        probe.pool.give_back();
        probe.stats.returns += 1;
        if let (true, Some(handler)) = (run_handler, probe.def.on_return.as_ref()) {
            let kind = HitKind::Return { entry_regs: &p.entry_regs, elapsed, function: p.function };
            let memory: &mut RemoteMemory = &mut self.memory;
            let hijacked = self.returns.hijacked(tid);
            let file_base = file_base(&self.sites, p.function);
            let hit = &mut Hit {
                probe: p.probe,
                pid,
                tid,
                regs,
                fs_base: p.fs_base,
                file_base,
                memory,
                kind,
                hijacked: &hijacked,
            };
            (handler.borrow_mut())(hit);
        }
    }

    /// Run the return handlers of the returns whose stubs have run since the last look.
    pub(crate) fn collect_returns(&mut self) {
        if !self.stubs.busy() {
            return;
        }
        for done in self.stubs.collect(&mut self.memory) {
            let Some(tid) = self.returns.owner.remove(&done.index) else {
                // A quarantined record: its return was counted as abandoned, and it went
                // where it should.
                self.returns.quarantine.retain(|q| q.0 != done.index);
                self.stubs.release(done.index);
                continue;
            };
            let thread = self.returns.by_thread.entry(tid).or_default();
            let returned = thread.pending.take_where(|i| i.data.record == Some(done.index));
            self.stubs.release(done.index);
            for i in handler_order(returned) {
                // What the return saw: the return value, the callee-saved registers (kept by
                // the function, as at its entry), the stack pointer past the return address.
                let e = &i.data.entry_regs;
                let mut regs = Regs {
                    rax: done.rax,
                    rdx: done.rdx,
                    rbx: e.rbx,
                    rbp: e.rbp,
                    r12: e.r12,
                    r13: e.r13,
                    r14: e.r14,
                    r15: e.r15,
                    rsp: i.slot + 8,
                    rip: i.ret,
                    ..Regs::default()
                };
                let ticks = done.tsc.wrapping_sub(i.data.entered_tsc) as f64;
                let elapsed = Duration::from_nanos((ticks / stubs::ticks_per_ns()) as u64);
                self.run_return(&i, tid, &mut regs, elapsed, true);
                self.returned_through_slot(tid, &mut regs);
            }
        }
    }
}
