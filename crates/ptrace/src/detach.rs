//! Letting the process go, from any state: every patched byte restored, every thread moved
//! out of the out-of-line copies and the return trampoline, every hijacked return address
//! rewritten, the out-of-line pages unmapped, and each thread detached with the signal it
//! was about to receive.

use std::collections::{BTreeMap, BTreeSet};

use dprobe_arch::{Addr, SlotCode};

use crate::error::TraceError;
use crate::sys;
use crate::tracee::{Tracee, EVENT_STOP};

impl Tracee {
    /// Stop tracing and let the program go on as if it had never been traced. The original
    /// code is written back first (while threads may run: one byte per probe), then every
    /// thread is stopped; a thread that trapped on a probe just before is moved back onto the
    /// original instruction, one inside an out-of-line copy onto the original code, one at
    /// the return trampoline to its real return address; the real return addresses go back
    /// into every stack; then each thread is detached.
    pub fn detach(mut self) -> Result<(), TraceError> {
        self.detach_all()
    }

    pub(crate) fn detach_all(&mut self) -> Result<(), TraceError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let sites: Vec<(Addr, u8)> = self.sites.iter().map(|(a, s)| (*a, s.insn.bytes[0])).collect();
        for (addr, original) in &sites {
            self.write(*addr, &[*original])?;
        }
        self.stop_all(&sites)?;
        let trampoline = self.xol.trampoline_addr();
        let slots: Vec<SlotCode> = self.sites.values().filter_map(|s| s.slot.clone()).collect();
        // A thread killed meanwhile is dropped from the list (nothing to restore in it).
        let mut alive = Vec::new();
        for tid in std::mem::take(&mut self.stopped) {
            match sys::get_regs(tid) {
                Err(e) if e.gone() => {}
                _ => alive.push(tid),
            }
        }
        self.stopped = alive;
        for tid in self.stopped.clone() {
            self.leave_slots(tid, &slots)?;
            self.leave_stubs(tid)?;
            if let Some(trampoline) = trampoline {
                let mut r = sys::get_regs(tid)?;
                if r.rip == trampoline.0 {
                    // It returned to the trampoline and has not trapped yet.
                    r.rip += 1;
                    self.on_return_trap(tid, &mut r, false)?;
                    sys::set_regs(tid, &r)?;
                }
            }
        }
        // Returns whose stubs ran are reported; the others get their real address back.
        self.collect_returns();
        for tid in self.stopped.clone() {
            self.returns.restore_stack(tid, trampoline, &self.stubs, &mut self.memory);
        }
        if let Some(&tid) = self.stopped.first() {
            // Best effort: a page left mapped is harmless, so a failure here is not fatal.
            let _ = self.xol.unmap_all(tid, &mut self.memory);
            let _ = self.stubs.unmap_all(tid, &mut self.memory);
        }
        for tid in std::mem::take(&mut self.stopped) {
            let signal = self.pending_signals.remove(&tid).unwrap_or(0);
            match sys::detach(tid, signal) {
                Ok(()) => {}
                Err(e) if e.gone() => {} // it was killed meanwhile
                Err(e) => return Err(e.into()),
            }
        }
        self.threads.clear();
        self.sites.clear();
        Ok(())
    }

    /// Bring every running thread to a stop the tracer controls. Stops that come first are
    /// dealt with: a probe hit (the probe is gone: the thread is moved back to the original
    /// instruction), a return to the trampoline (to the real return address), the program's
    /// own signals (kept, to be delivered at detach), new threads (stopped too).
    fn stop_all(&mut self, sites: &[(Addr, u8)]) -> Result<(), TraceError> {
        let mut to_stop: BTreeSet<i32> = self.threads.iter().copied().filter(|t| !self.stopped.contains(t)).collect();
        for tid in &to_stop {
            let _ = if self.seized { sys::interrupt(*tid) } else { sys::tgkill(self.pid, *tid, libc::SIGSTOP) };
        }
        let trampoline = self.xol.trampoline_addr();
        let mut pending: BTreeMap<i32, i32> = BTreeMap::new();
        while !to_stop.is_empty() {
            let (tid, status) = sys::wait(-1)?;
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.threads.remove(&tid);
                to_stop.remove(&tid);
                self.forget_thread_returns(tid);
                continue;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            let signal = libc::WSTOPSIG(status);
            let event = sys::event_of(status);
            let ours = if self.seized { event == EVENT_STOP } else { event == 0 && signal == libc::SIGSTOP };
            if ours && (to_stop.contains(&tid) || !self.threads.contains(&tid)) {
                self.threads.insert(tid);
                to_stop.remove(&tid);
                self.fresh.remove(&tid);
                self.stopped.push(tid);
                continue;
            }
            match event {
                libc::PTRACE_EVENT_CLONE => {
                    let new = sys::event_message(tid)? as i32;
                    if self.threads.insert(new) {
                        // Its first stop is the one we wait for.
                        to_stop.insert(new);
                    }
                }
                libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                    let child = sys::event_message(tid)? as i32;
                    self.release_child(tid, child)?;
                }
                0 if signal == libc::SIGTRAP => {
                    let mut r = sys::get_regs(tid)?;
                    let at = r.rip.wrapping_sub(1);
                    if sites.iter().any(|(a, _)| a.0 == at) {
                        r.rip = at; // the probe is gone: run the original instruction
                        sys::set_regs(tid, &r)?;
                    } else if Some(Addr(at)) == trampoline {
                        self.on_return_trap(tid, &mut r, false)?;
                        sys::set_regs(tid, &r)?;
                    } else {
                        pending.insert(tid, signal);
                    }
                }
                0 => {
                    pending.insert(tid, signal);
                }
                _ => {}
            }
            match sys::cont(tid, 0) {
                Err(e) if e.gone() => {} // killed meanwhile: its exit comes next
                other => other?,
            }
        }
        self.pending_signals.extend(pending);
        Ok(())
    }

    /// Let a stopped thread that is inside a return stub finish it (a few `mov`s and a jump to
    /// the real return address).
    fn leave_stubs(&mut self, tid: i32) -> Result<(), TraceError> {
        for _ in 0..16 {
            if !self.stubs.contains(Addr(sys::get_regs(tid)?.rip)) {
                return Ok(());
            }
            sys::single_step(tid)?;
            sys::wait(tid)?;
        }
        Err(TraceError::Stuck { tid, place: "a return stub" })
    }

    /// Move a stopped thread out of the out-of-line copies: at a copy's start it has not run
    /// the instruction yet and goes back to the original one; further in, it is stepped until
    /// the copy has jumped back.
    fn leave_slots(&mut self, tid: i32, slots: &[SlotCode]) -> Result<(), TraceError> {
        for _ in 0..64 {
            let mut r = sys::get_regs(tid)?;
            let Some(slot) = slots.iter().find(|s| s.contains(Addr(r.rip))) else { return Ok(()) };
            if r.rip == slot.entry().0 && slot.far_scratch.is_none() {
                r.rip = slot.original.0;
                return Ok(sys::set_regs(tid, &r)?);
            }
            sys::single_step(tid)?;
            sys::wait(tid)?;
        }
        Err(TraceError::Stuck { tid, place: "an out-of-line copy" })
    }
}

impl Drop for Tracee {
    /// A tracee that is dropped while traced is detached (see [`Tracee::detach`]).
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.detach_all();
        }
    }
}
