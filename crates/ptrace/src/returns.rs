//! Return probes across processes: at a return probe's entry the return address on the
//! thread's stack is replaced with the trampoline (one `int3` in the out-of-line page) and
//! remembered; when the function returns there, the thread stops, the return handlers run,
//! and the thread goes on at the real return address.
//!
//! The rules are the kernel's uretprobe rules: at most `maxactive` returns pending per
//! probe (further entries are counted as missed); a pending return whose stack slot is
//! below the stack pointer belongs to a frame the program abandoned (`longjmp`, an
//! exception) and is dropped; two return probes on one function share one hijack.

use std::collections::HashMap;
use std::time::Instant;

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_core::ProbeId;

use crate::error::TraceError;
use crate::probes::{Hit, HitKind, Probe};
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
    entry_regs: Regs,
}

/// Pending returns, per thread, innermost last.
#[derive(Default)]
pub(crate) struct Returns {
    by_thread: HashMap<i32, Vec<Pending>>,
}

impl Returns {
    /// Forget a thread's pending returns (it exited); their probes get the instances back.
    pub fn forget_thread(&mut self, tid: i32, probes: &mut std::collections::BTreeMap<ProbeId, Probe>) {
        for p in self.by_thread.remove(&tid).unwrap_or_default() {
            if let Some(probe) = probes.get_mut(&p.probe) {
                probe.active -= 1;
                probe.stats.abandoned += 1;
            }
        }
    }

    /// Forget everything (a new program image).
    pub fn clear(&mut self) {
        self.by_thread.clear();
    }

    /// Put the real return addresses back into the stack of thread `tid`, in `memory` (the
    /// process's, at detach, or a forked child's, which inherits the hijacked stack).
    pub fn restore_stack(&self, tid: i32, trampoline: Addr, memory: &mut dyn Memory) {
        for p in self.by_thread.get(&tid).map(Vec::as_slice).unwrap_or_default() {
            let mut now = [0u8; 8];
            if memory.read(p.slot, &mut now).is_ok() && u64::from_le_bytes(now) == trampoline.0 {
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
        let mut taken: Vec<Pending> = stack.drain(keep..).collect();
        let Some(outer) = taken.first().map(|p| p.slot) else { return (Vec::new(), Vec::new()) };
        let split = taken.iter().position(|p| p.slot != outer).unwrap_or(taken.len());
        let abandoned = taken.split_off(split);
        (taken, abandoned)
    }
}

impl Tracee {
    /// At the entry of a function with return probes: drop pending returns of frames the
    /// program abandoned, then hijack the return address for each probe with room.
    pub(crate) fn hijack_return(
        &mut self,
        tid: i32,
        regs: &Regs,
        function: Addr,
        probe_ids: &[ProbeId],
    ) -> Result<(), TraceError> {
        let Some(trampoline) = self.xol.trampoline_addr() else { return Ok(()) };
        let sp = regs.rsp;
        let stack = self.returns.by_thread.entry(tid).or_default();
        while stack.last().is_some_and(|p| p.slot.0 <= sp) {
            let dead = stack.pop().expect("checked");
            if let Some(probe) = self.probes.get_mut(&dead.probe) {
                probe.active -= 1;
                probe.stats.abandoned += 1;
            }
        }
        let mut ret = None;
        for id in probe_ids {
            let Some(probe) = self.probes.get_mut(id) else { continue };
            if probe.def.on_return.is_none() {
                continue;
            }
            if probe.active >= probe.def.maxactive {
                probe.stats.missed += 1;
                continue;
            }
            let real = match ret {
                Some(r) => r,
                None => {
                    let mut word = [0u8; 8];
                    self.memory.read(Addr(sp), &mut word).map_err(|e| TraceError::other(e.to_string()))?;
                    let r = Addr(u64::from_le_bytes(word));
                    ret = Some(r);
                    r
                }
            };
            probe.active += 1;
            let entered = Instant::now();
            stack.push(Pending { probe: *id, slot: Addr(sp), ret: real, function, entered, entry_regs: *regs });
        }
        if ret.is_some() {
            self.memory.write(Addr(sp), &trampoline.0.to_le_bytes()).map_err(|e| TraceError::other(e.to_string()))?;
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
            if let Some(probe) = self.probes.get_mut(&p.probe) {
                probe.active -= 1;
                probe.stats.abandoned += 1;
            }
        }
        let Some(real) = returning.first().map(|p| p.ret) else { return Err(TraceError::LostReturn { tid }) };
        let mut regs = sys::to_regs(r);
        regs.rip = real.0;
        for p in &returning {
            let Some(probe) = self.probes.get_mut(&p.probe) else { continue };
            probe.active -= 1;
            probe.stats.returns += 1;
            if let (true, Some(handler)) = (run_handlers, probe.def.on_return.as_mut()) {
                let kind =
                    HitKind::Return { entry_regs: &p.entry_regs, elapsed: p.entered.elapsed(), function: p.function };
                let memory: &mut RemoteMemory = &mut self.memory;
                handler(&mut Hit { probe: p.probe, tid, regs: &mut regs, fs_base: r.fs_base, memory, kind });
            }
        }
        sys::from_regs(&regs, r);
        Ok(())
    }
}
