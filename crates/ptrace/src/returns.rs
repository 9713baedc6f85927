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
//! The rules are the kernel's uretprobe rules: at most `maxactive` returns pending per
//! probe (further entries are counted as missed); a pending return whose stack slot is at
//! or below the stack pointer at a later entry belongs to a frame the program abandoned
//! (`longjmp`, an exception) and is dropped; probes on one function share one hijack.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_core::ProbeId;

use crate::error::TraceError;
use crate::probes::{Hit, HitKind, Probe};
use crate::stubs::{self, Stubs};
use crate::sys::{self, RemoteMemory};
use crate::tracee::Tracee;

/// One pending return.
pub(crate) struct Pending {
    probe: ProbeId,
    /// The stack slot holding the (hijacked) return address.
    slot: Addr,
    /// The real return address.
    ret: Addr,
    function: Addr,
    entered: Instant,
    entered_tsc: u64,
    fs_base: u64,
    entry_regs: Regs,
    /// The return stub's record, when the return does not stop.
    record: Option<usize>,
}

/// Pending returns, per thread, innermost last.
#[derive(Default)]
pub(crate) struct Returns {
    by_thread: HashMap<i32, Vec<Pending>>,
    /// The thread of each taken stub record.
    owner: HashMap<usize, i32>,
}

/// Count a dropped pending return against its probe and free its record.
fn abandon(p: &Pending, probes: &mut BTreeMap<ProbeId, Probe>, stubs: &mut Stubs, owner: &mut HashMap<usize, i32>) {
    if let Some(probe) = probes.get_mut(&p.probe) {
        probe.active -= 1;
        probe.stats.abandoned += 1;
    }
    if let Some(index) = p.record {
        if owner.remove(&index).is_some() {
            stubs.release(index);
        }
    }
}

impl Returns {
    /// Forget everything (a new program image).
    pub fn clear(&mut self) {
        self.by_thread.clear();
        self.owner.clear();
    }

    /// Put the real return addresses back into the stack of thread `tid`, in `memory` (the
    /// process's, at detach, or a forked child's, which inherits the hijacked stack).
    pub fn restore_stack(&self, tid: i32, trampoline: Option<Addr>, stubs: &Stubs, memory: &mut dyn Memory) {
        for p in self.by_thread.get(&tid).map(Vec::as_slice).unwrap_or_default() {
            let hijacked = match p.record {
                Some(index) => Some(stubs.stub(index)),
                None => trampoline,
            };
            let mut now = [0u8; 8];
            if memory.read(p.slot, &mut now).is_ok() && Some(Addr(u64::from_le_bytes(now))) == hijacked {
                let _ = memory.write(p.slot, &p.ret.0.to_le_bytes());
            }
        }
    }

    /// Take the pending returns a thread at the trampoline with stack pointer `sp` is
    /// making: every pending return whose slot is below `sp`; the outermost slot is the
    /// function returning now (with every probe sharing it), the ones below were
    /// abandoned. Returns (returning, abandoned), each in entry order.
    fn take_returning(&mut self, tid: i32, sp: u64) -> (Vec<Pending>, Vec<Pending>) {
        let stack = self.by_thread.entry(tid).or_default();
        let keep = stack.iter().rposition(|p| p.slot.0 >= sp).map_or(0, |i| i + 1);
        let taken: Vec<Pending> = stack.drain(keep..).collect();
        let outer = taken.iter().filter(|p| p.record.is_none()).map(|p| p.slot).max();
        taken.into_iter().partition(|p| Some(p.slot) == outer && p.record.is_none())
    }
}

impl Tracee {
    /// A thread exited: its pending returns will never come.
    pub(crate) fn forget_thread_returns(&mut self, tid: i32) {
        for p in self.returns.by_thread.remove(&tid).unwrap_or_default() {
            abandon(&p, &mut self.probes, &mut self.stubs, &mut self.returns.owner);
        }
    }

    /// The process executed a new program: every pending return is gone with the old image
    /// (counted as abandoned, including returns a stub recorded after the last stop: the old
    /// memory cannot be read any more).
    pub(crate) fn forget_all_returns(&mut self) {
        let threads: Vec<i32> = self.returns.by_thread.keys().copied().collect();
        for tid in threads {
            self.forget_thread_returns(tid);
        }
        self.returns.clear();
    }

    /// At the entry of a function with return probes: drop pending returns of frames the
    /// program abandoned, then hijack the return address for each probe with room.
    pub(crate) fn hijack_return(
        &mut self,
        tid: i32,
        regs: &Regs,
        fs_base: u64,
        function: Addr,
        probe_ids: &[ProbeId],
    ) -> Result<(), TraceError> {
        let sp = regs.rsp;
        let stack = self.returns.by_thread.entry(tid).or_default();
        while stack.last().is_some_and(|p| p.slot.0 <= sp) {
            let dead = stack.pop().expect("checked");
            abandon(&dead, &mut self.probes, &mut self.stubs, &mut self.returns.owner);
        }
        let with_room: Vec<ProbeId> = probe_ids
            .iter()
            .copied()
            .filter(|id| {
                let Some(probe) = self.probes.get_mut(id) else { return false };
                if probe.def.on_return.is_none() {
                    return false;
                }
                if probe.active >= probe.def.maxactive {
                    probe.stats.missed += 1;
                    return false;
                }
                true
            })
            .collect();
        if with_room.is_empty() {
            return Ok(());
        }
        let mut word = [0u8; 8];
        self.memory.read(Addr(sp), &mut word)?;
        let real = Addr(u64::from_le_bytes(word));
        let no_stop = with_room.iter().all(|id| self.probes[id].def.no_return_stop);
        let record = if no_stop {
            let index = self.stubs.take(tid, &mut self.memory)?;
            self.stubs.arm(self.pid, index, real, Addr(sp))?;
            self.returns.owner.insert(index, tid);
            Some(index)
        } else {
            let trampoline = self.xol.trampoline_addr().ok_or(TraceError::NoTrampoline)?;
            self.memory.write(Addr(sp), &trampoline.0.to_le_bytes())?;
            None
        };
        let (entered, entered_tsc) = (Instant::now(), stubs::tsc());
        let stack = self.returns.by_thread.entry(tid).or_default();
        for id in with_room {
            self.probes.get_mut(&id).expect("filtered").active += 1;
            stack.push(Pending {
                probe: id,
                slot: Addr(sp),
                ret: real,
                function,
                entered,
                entered_tsc,
                fs_base,
                entry_regs: *regs,
                record,
            });
        }
        Ok(())
    }

    /// Thread `tid` stopped on the trampoline (`r.rip` is just past its `int3`): run the
    /// return handlers and send it on to the real return address.
    pub(crate) fn on_return_trap(
        &mut self,
        tid: i32,
        r: &mut libc::user_regs_struct,
        run_handlers: bool,
    ) -> Result<(), TraceError> {
        let (returning, abandoned) = self.returns.take_returning(tid, r.rsp);
        for p in &abandoned {
            abandon(p, &mut self.probes, &mut self.stubs, &mut self.returns.owner);
        }
        let Some(real) = returning.first().map(|p| p.ret) else { return Err(TraceError::LostReturn { tid }) };
        let mut regs = sys::to_regs(r);
        regs.rip = real.0;
        for p in &returning {
            let elapsed = p.entered.elapsed();
            self.run_return(p, tid, &mut regs, elapsed, run_handlers);
        }
        sys::from_regs(&regs, r);
        Ok(())
    }

    fn run_return(&mut self, p: &Pending, tid: i32, regs: &mut Regs, elapsed: Duration, run_handler: bool) {
        let Some(probe) = self.probes.get_mut(&p.probe) else { return };
        probe.active -= 1;
        probe.stats.returns += 1;
        if let (true, Some(handler)) = (run_handler, probe.def.on_return.as_mut()) {
            let kind = HitKind::Return { entry_regs: &p.entry_regs, elapsed, function: p.function };
            let memory: &mut RemoteMemory = &mut self.memory;
            handler(&mut Hit { probe: p.probe, tid, regs, fs_base: p.fs_base, memory, kind });
        }
    }

    /// Run the return handlers of the returns whose stubs have run since the last look.
    pub(crate) fn collect_returns(&mut self) {
        if !self.stubs.busy() {
            return;
        }
        for done in self.stubs.collect(&mut self.memory) {
            let Some(tid) = self.returns.owner.remove(&done.index) else { continue };
            let stack = self.returns.by_thread.entry(tid).or_default();
            let mut returned = Vec::new();
            let mut i = 0;
            while i < stack.len() {
                if stack[i].record == Some(done.index) {
                    returned.push(stack.remove(i));
                } else {
                    i += 1;
                }
            }
            self.stubs.release(done.index);
            for p in &returned {
                // What the return saw: the return value, the callee-saved registers (kept by
                // the function, as at its entry), the stack pointer past the return address.
                let e = &p.entry_regs;
                let mut regs = Regs {
                    rax: done.rax,
                    rdx: done.rdx,
                    rbx: e.rbx,
                    rbp: e.rbp,
                    r12: e.r12,
                    r13: e.r13,
                    r14: e.r14,
                    r15: e.r15,
                    rsp: p.slot.0 + 8,
                    rip: p.ret.0,
                    ..Regs::default()
                };
                let ticks = done.tsc.wrapping_sub(p.entered_tsc) as f64;
                let elapsed = Duration::from_nanos((ticks / stubs::ticks_per_ns()) as u64);
                self.run_return(p, tid, &mut regs, elapsed, true);
            }
        }
    }
}
