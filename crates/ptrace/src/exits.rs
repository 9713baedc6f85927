//! Return probes that never touch the stack. When every exit of a function is known
//! (`dprobe_arch::find_exits`: each `ret`, each tail call), its return probes watch those
//! exits instead of replacing the return address: each exit is an ordinary probe site, and
//! the thread's entries and exits are paired by the stack pointer (`dprobe_core::returns::exits`).
//! Nothing of the program's stack is written, so exceptions, `longjmp`, alternate signal
//! stacks, tail calls, any depth of recursion and programs that read their own return address
//! all see the stack they left.
//!
//! A tail call (`jmp` to another function) into a function whose exits are watched hands the
//! caller's return over to the callee: both return at the callee's exit, innermost first,
//! with its return value (as the kernel's chained uretprobes do). A tail call into any other
//! function writes the trampoline into the return address the callee will return through
//! (the caller's), so that the caller returns with the callee, with its value; only where no
//! trampoline can be had is the caller's return reported at the jump, where `rax` holds no
//! return value yet.

use std::collections::HashMap;
use std::time::Instant;

use dprobe_arch::{
    analyze, emulate, endbr64_len, find_exits, Addr, CodePart, Emulation, ExecClass, ExitKind, ExitsUnknown,
    MemOperand, Memory, Regs,
};
use dprobe_core::returns::exits::{ActivationStack, Left};
pub use dprobe_core::returns::ReturnMode;
use dprobe_core::ProbeId;
use dprobe_sym::{Function, Mapping, Symbols};

use crate::error::TraceError;
use crate::probes::{file_base, Hit, HitKind};
use crate::sys::RemoteMemory;
use crate::tracee::Tracee;

/// One call of a function whose exits are watched.
#[derive(Clone)]
pub(crate) struct Activation {
    function: Addr,
    /// Its return probes that had room (`maxactive`).
    probes: Vec<ProbeId>,
    entered: Instant,
    entry_regs: Regs,
    fs_base: u64,
    /// Handed over by a tail call: the registers at the jump, and the time to it.
    jumped: Option<(Regs, std::time::Duration)>,
}

/// Every thread's pending activations.
#[derive(Default)]
pub(crate) struct Activations {
    by_thread: HashMap<i32, ActivationStack<Activation>>,
}

impl Activations {
    /// A followed fork child's share of thread `parent`'s activations: its copy of that thread
    /// (`child`) leaves the same calls, through its copy of the probed code.
    pub(crate) fn carry_into_fork(&self, parent: i32, child: i32) -> Activations {
        let mut carried = Activations::default();
        if let Some(stack) = self.by_thread.get(&parent) {
            carried.by_thread.insert(child, stack.clone());
        }
        carried
    }

    /// The return probes of thread `tid`'s activations, one per pending return.
    pub(crate) fn pending_probes(&self, tid: i32) -> Vec<ProbeId> {
        let Some(stack) = self.by_thread.get(&tid) else { return Vec::new() };
        stack.iter().flat_map(|a| a.probes.iter().copied()).collect()
    }
}

impl Tracee {
    /// The exits of function `f`, from its original code (dprobe's own patches undone), and
    /// its cold part if it has one.
    pub(crate) fn exits_of(
        &mut self,
        f: &Function,
        symbols: &Symbols,
    ) -> Result<(dprobe_arch::Exits, Option<Function>), ExitsUnknown> {
        let cold = symbols.cold_part(f).cloned();
        let mut parts = vec![(f.start, f.size)];
        parts.extend(cold.as_ref().map(|c| (c.start, c.size)));
        let mut code = Vec::new();
        for &(start, size) in &parts {
            let mut bytes = vec![0u8; size as usize];
            if size == 0 || self.read(start, &mut bytes).is_err() {
                return Err(ExitsUnknown::UnknownBounds);
            }
            for s in self.sites.range(start..start.offset(size)).map(|(_, s)| s) {
                s.prepared.arm().revert_in(&mut bytes, start);
            }
            code.push((start, bytes));
        }
        let parts: Vec<CodePart<'_>> =
            code.iter().map(|(start, bytes)| CodePart { start: *start, code: bytes }).collect();
        Ok((find_exits(&parts, &mut self.memory)?, cold))
    }

    /// Arm every exit of function `f` (with cold part `cold`) as a probe site.
    pub(crate) fn arm_exits(
        &mut self,
        tid: i32,
        f: &Function,
        cold: Option<&Function>,
        exits: &dprobe_arch::Exits,
        maps: &[Mapping],
    ) -> Result<(), TraceError> {
        for site in &exits.sites {
            if !self.sites.contains_key(&site.addr) {
                let part = cold.filter(|c| c.contains(site.addr)).unwrap_or(f);
                self.new_site(tid, site.addr, part, maps, None)?;
            }
            let s = self.sites.get_mut(&site.addr).expect("armed");
            if !s.exit_of.iter().any(|(function, _)| *function == f.start) {
                s.exit_of.push((f.start, site.kind));
            }
        }
        Ok(())
    }

    /// At the entry of a function whose exits are watched: a new activation for its return
    /// probes with room, after dropping those the program abandoned.
    pub(crate) fn enter_watched(&mut self, tid: i32, regs: &Regs, fs_base: u64, function: Addr, ids: &[ProbeId]) {
        let probes: Vec<ProbeId> = ids
            .iter()
            .copied()
            .filter(|id| {
                let Some(p) = self.probes.get_mut(id) else { return false };
                if !p.pool.take() {
                    p.stats.missed += 1;
                    return false;
                }
                true
            })
            .collect();
        let pid = self.pid;
        let stacks = &mut self.returns.stacks;
        let thread = self.activations.by_thread.entry(tid).or_default();
        // Kept even without probes to pair: it still marks the frames it replaces as gone.
        let act = Activation { function, probes, entered: Instant::now(), entry_regs: *regs, fs_base, jumped: None };
        let stale = thread.enter(regs.rsp, act, &mut stacks.of(pid));
        self.drop_stale(tid, stale);
    }

    /// At an exit site (`regs` before its instruction runs): if the function leaves here, its
    /// activation returns (at a `ret`, or at a tail call into a function whose returns are
    /// not watched), or is handed over to the callee of a tail call, to return with it.
    pub(crate) fn leave_watched(&mut self, tid: i32, regs: &mut Regs, exit_of: &[(Addr, ExitKind)]) {
        let Some(kind) = exit_of.iter().map(|(_, kind)| *kind).find(|kind| self.taken(*kind, regs)) else { return };
        let callee = match kind {
            ExitKind::Ret => None,
            ExitKind::TailJump { target } | ExitKind::TailBranch { target } => Some(target),
            ExitKind::TailJumpThrough { slot } => self.memory.read_u64(slot).ok().map(Addr),
        };
        // Handed over when the callee's return is watched, at its exits or through its
        // return address.
        let hand_over = callee.is_some_and(|c| {
            let c = self.through_plt(c);
            self.sites.get(&c).is_some_and(|s| {
                s.probes.iter().any(|id| self.probes.get(id).is_some_and(|p| p.def.on_return.is_some()))
            })
        });
        // Into any other function: its return, with its value, is the caller's too, seen
        // through the trampoline in the return address the callee returns through.
        let hand_over = hand_over || (callee.is_some() && self.watch_return_of_tail_call(tid, regs.rsp));
        let pid = self.pid;
        let stacks = &mut self.returns.stacks;
        let Some(thread) = self.activations.by_thread.get_mut(&tid) else { return };
        if hand_over {
            let (stale, handed) = thread.hand_over(regs.rsp, &mut stacks.of(pid));
            if let Some(act) = handed {
                act.jumped = Some((*regs, act.entered.elapsed()));
            }
            self.drop_stale(tid, stale);
            return;
        }
        let Left { stale, returning } = thread.leave(regs.rsp, &mut stacks.of(pid));
        self.drop_stale(tid, stale);
        for act in returning {
            let elapsed = act.entered.elapsed();
            self.run_exit(tid, regs, &act, elapsed);
        }
    }

    /// Thread `tid` returned through a return address dprobe replaced, with `regs` (`rsp`
    /// past the return address, `rip` where it returns to): the activations a tail call
    /// handed over to the function that returned return too.
    pub(crate) fn returned_through_slot(&mut self, tid: i32, regs: &mut Regs) {
        let pid = self.pid;
        let stacks = &mut self.returns.stacks;
        let Some(thread) = self.activations.by_thread.get_mut(&tid) else { return };
        let slot = regs.rsp.wrapping_sub(8);
        if !thread.iter_handed_over().any(|sp| sp == slot) {
            return;
        }
        let Left { stale, returning } = thread.leave(slot, &mut stacks.of(pid));
        self.drop_stale(tid, stale);
        for act in returning {
            let elapsed = act.entered.elapsed();
            let mut at_exit = Regs { rsp: slot, ..*regs };
            self.run_exit_seen(tid, &mut at_exit, &act, elapsed, regs.rip);
            let (rip, rsp) = (regs.rip, regs.rsp);
            *regs = Regs { rip, rsp, ..at_exit };
        }
    }

    /// Run the return handlers of activation `act` with the registers at its exit.
    fn run_exit(&mut self, tid: i32, regs: &mut Regs, act: &Activation, elapsed: std::time::Duration) {
        let ret = self.memory.read_u64(Addr(regs.rsp)).unwrap_or(0);
        self.run_exit_seen(tid, regs, act, elapsed, ret);
    }

    /// [`Tracee::run_exit`] returning to `ret`.
    fn run_exit_seen(&mut self, tid: i32, regs: &mut Regs, act: &Activation, elapsed: std::time::Duration, ret: u64) {
        // What a handler sees: the registers as the function leaves, `rip` where it returns
        // to, `rsp` past the return address.
        let mut seen = *regs;
        seen.rip = ret;
        seen.rsp = regs.rsp.wrapping_add(8);
        let process = self.process_of(tid);
        // Return addresses replaced by other return probes (those watched through them), for
        // a handler that walks the stack.
        let hijacked = self.returns.hijacked(tid);
        for id in &act.probes {
            let Some(probe) = self.probes.get_mut(id) else { continue };
            probe.pool.give_back();
            probe.stats.returns += 1;
            if let Some(handler) = probe.def.on_return.as_ref() {
                let kind = HitKind::Return { entry_regs: &act.entry_regs, elapsed, function: act.function };
                let memory: &mut RemoteMemory = &mut self.memory;
                let mut hit = Hit {
                    probe: *id,
                    pid: process,
                    tid,
                    regs: &mut seen,
                    fs_base: act.fs_base,
                    file_base: file_base(&self.sites, act.function),
                    memory,
                    kind,
                    hijacked: &hijacked,
                };
                (handler.borrow_mut())(&mut hit);
            }
        }
        // A handler may change the return value and other registers, not where the
        // instruction goes.
        let (rip, rsp) = (regs.rip, regs.rsp);
        *regs = Regs { rip, rsp, ..seen };
    }

    /// Activations found stale: abandoned, except those a tail call handed over, which did
    /// leave (through a callee whose return was not seen): they return as they were at the
    /// jump.
    fn drop_stale(&mut self, tid: i32, stale: Vec<(Activation, bool)>) {
        for (gone, _) in stale {
            match gone.jumped {
                Some((mut regs, elapsed)) => self.run_exit(tid, &mut regs, &gone, elapsed),
                None => self.abandon_activation(gone),
            }
        }
    }

    /// Where a jump to `target` goes when `target` is a PLT entry (`[endbr64;] jmp *GOT`):
    /// the function the GOT entry holds (or, while it is not bound yet, the PLT's own code).
    fn through_plt(&mut self, target: Addr) -> Addr {
        if self.sites.contains_key(&target) {
            return target;
        }
        let mut code = [0u8; 24];
        if self.memory.read(target, &mut code).is_err() {
            return target;
        }
        let skip = endbr64_len(&code);
        let at = target.offset(skip as u64);
        match analyze(&code[skip..], at, at).map(|i| i.class) {
            Ok(ExecClass::Emulate {
                emulation: Emulation::JmpMem { mem: MemOperand { base: None, index: None, disp, .. } },
                ..
            }) => self.memory.read_u64(Addr(disp)).map(Addr).unwrap_or(target),
            _ => target,
        }
    }

    /// Whether the exit instruction at `regs.rip` leaves the function with these registers (a
    /// conditional tail call only when its condition holds).
    fn taken(&mut self, kind: ExitKind, regs: &Regs) -> bool {
        let ExitKind::TailBranch { target } = kind else { return true };
        let Some(site) = self.sites.get(&Addr(regs.rip)) else { return true };
        let ExecClass::Emulate { emulation, .. } = site.prepared.insn.class else { return true };
        let mut after = *regs;
        emulate(emulation, site.prepared.insn.next(), &mut after, &mut self.memory).is_ok() && after.rip == target.0
    }

    fn abandon_activation(&mut self, gone: Activation) {
        for id in gone.probes {
            if let Some(p) = self.probes.get_mut(&id) {
                p.pool.give_back();
                p.stats.abandoned += 1;
            }
        }
    }

    /// Thread `tid` is gone: its activations will never leave.
    pub(crate) fn forget_thread_activations(&mut self, tid: i32) {
        let Some(mut thread) = self.activations.by_thread.remove(&tid) else { return };
        for (gone, _) in thread.drain() {
            self.abandon_activation(gone);
        }
    }

    /// The program image is gone: every activation with it.
    pub(crate) fn forget_all_activations(&mut self) {
        let threads: Vec<i32> = self.activations.by_thread.keys().copied().collect();
        for tid in threads {
            self.forget_thread_activations(tid);
        }
    }
}
