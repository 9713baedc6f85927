//! Letting the process go, from any state: every patched byte restored, every thread moved
//! out of the out-of-line copies and the return trampoline, every hijacked return address
//! rewritten, the out-of-line pages unmapped, and each thread detached with the signal it
//! was about to receive (or, for a tracer about to end, put back into the system call it was
//! taken out of and left to the end of the tracer's thread: see `let_go`).

use std::collections::BTreeSet;

use dprobe_arch::{Addr, SlotCode};
use dprobe_core::Exit;

use crate::error::TraceError;
use crate::inject;
use crate::sys;
use crate::thread::{State, Stop};
use crate::tracee::{Tracee, EVENT_STOP};

impl Tracee {
    /// Stop tracing and let the program go on as if it had never been traced. The original
    /// code is written back first (while threads may run: one byte per probe), then every
    /// thread is stopped; a thread that trapped on a probe just before is moved back onto the
    /// original instruction, one inside an out-of-line copy onto the original code, one at
    /// the return trampoline to its real return address; the real return addresses go back
    /// into every stack; then each thread is detached. A thread taken out of a waiting system
    /// call restarts it once detached, where a signal that comes at that moment can be handled
    /// without ending the call: a tracer whose thread ends next lets go without that moment
    /// ([`Tracee::let_go_as_thread_ends`]).
    pub fn detach(mut self) -> Result<(), TraceError> {
        self.detach_all(&|| false)
    }

    /// [`Tracee::detach`], giving up the wait for threads to stop when a signal interrupts it
    /// and `give_up` says so (a second Ctrl-C): the original code is back by then; the
    /// threads that stopped are let go, the others when the tracing thread ends
    /// ([`TraceError::GaveUp`]).
    pub fn detach_giving_up(mut self, give_up: &dyn Fn() -> bool) -> Result<(), TraceError> {
        self.detach_all(give_up)
    }

    /// [`Tracee::detach_giving_up`] for a tracer whose thread is about to end (dprobe's, as it
    /// exits; a thread made for the trace): no thread the tracer took out of a system call is
    /// woken to go back into it. `PTRACE_DETACH` wakes a thread, which then restarts its call
    /// untraced: a signal of the program's that comes in that moment runs its handler first,
    /// and the call (`pause`, `nanosleep`, `read`...) then waits on as if the signal had never
    /// come. Such a thread is instead put back into its call while still traced and continued
    /// (see `let_go`); the kernel unlinks it, without waking it, when the calling thread
    /// ends. Until then a signal of the program's holds it, and it receives that signal then
    /// (or from [`crate::wait_for_command`]); its ptrace options are cleared, so nothing else
    /// stops it. Returns how the program ended, when it did as it was let go (a signal it got
    /// as the trace ended): its end was reported here, not to a later wait.
    pub fn let_go_as_thread_ends(mut self, give_up: &dyn Fn() -> bool) -> Result<Option<Exit>, TraceError> {
        self.ends_with_thread = true;
        self.detach_all(give_up)?;
        Ok(self.exit)
    }

    /// Let held thread `tid` go with `signal` (see [`Tracee::let_go_as_thread_ends`]).
    pub(crate) fn let_thread_go(&self, tid: i32, signal: i32, group_stop: bool) -> Result<(), TraceError> {
        match self.ends_with_thread {
            true => crate::let_go::let_thread_go(self.process_of(tid), tid, signal, group_stop),
            false => Ok(sys::detach(tid, signal)?),
        }
    }

    pub(crate) fn detach_all(&mut self, give_up: &dyn Fn() -> bool) -> Result<(), TraceError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        // Lowered before the probes go: the program stops preparing arguments first.
        self.lower_semaphores();
        if let Err(e) = self.disarm_sites() {
            // A program ending (by a signal of its own that came as the trace ended) has no
            // code left to give back; its end is collected as its threads are stopped.
            if !memory_gone(self.pid) {
                return Err(e);
            }
        }
        if let Err(e) = self.stop_all(give_up) {
            if matches!(e, TraceError::GaveUp { .. } | TraceError::Blocked { .. }) {
                self.let_held_go();
            }
            return Err(e);
        }
        self.let_early_children_go();
        let slots: Vec<SlotCode> = self.sites.values().filter_map(|s| s.prepared.slot.clone()).collect();
        for tid in self.threads.keys().copied().collect::<Vec<_>>() {
            match self.leave_dprobe_code(tid, &slots) {
                // A thread killed meanwhile: nothing to restore in it.
                Err(TraceError::Gone { .. }) => {
                    self.threads.remove(&tid);
                }
                other => other?,
            }
        }
        // Returns whose stubs ran are reported; the others get their real address back.
        self.collect_returns();
        let trampoline = self.xol.trampoline_addr();
        for tid in self.threads.keys() {
            self.returns.restore_stack(*tid, trampoline, &self.stubs, &mut self.memory);
        }
        if let Ok(tid) = self.a_stopped_thread() {
            // Best effort: a page left mapped is harmless, so a failure here is not fatal.
            let _ =
                self.xol.unmap_all(tid, &mut self.memory).and_then(|()| self.stubs.unmap_all(tid, &mut self.memory));
            // The last call made for the tracer: no trap of dprobe's comes after it.
            self.put_trap_action_back(tid);
        }
        self.close_traps();
        for (tid, thread) in std::mem::take(&mut self.threads) {
            let (signal, group_stop) = self.leaving_with(tid, thread);
            match self.let_thread_go(tid, signal, group_stop) {
                Ok(()) => {}
                Err(e) if e.is_gone() => {} // it was killed meanwhile
                Err(e) => return Err(e),
            }
        }
        self.sites.clear();
        Ok(())
    }

    /// Restore and go: every thread stopped so far is moved out of dprobe's code (as far as
    /// it can be) and detached; every thread's stack gets its real return addresses back, the
    /// stacks of threads that have not stopped too (through memory: such a thread cannot be
    /// detached, the kernel lets it go when the tracing thread ends, and it must not return
    /// into dprobe's trampoline then). dprobe's pages stay mapped: a thread that has not stopped may be in
    /// an out-of-line copy or a return stub, which take it back to the program's code. Best
    /// effort throughout.
    pub(crate) fn let_held_go(&mut self) {
        let slots: Vec<SlotCode> = self.sites.values().filter_map(|s| s.prepared.slot.clone()).collect();
        let held: Vec<i32> = self.threads.iter().filter(|(_, t)| t.is_stopped()).map(|(tid, _)| *tid).collect();
        for &tid in &held {
            let _ = self.leave_dprobe_code(tid, &slots);
        }
        self.collect_returns();
        let trampoline = self.xol.trampoline_addr();
        for tid in self.threads.keys() {
            self.returns.restore_stack(*tid, trampoline, &self.stubs, &mut self.memory);
        }
        // A thread stopped for no signal can make the call (a thread still running may trap
        // after, but most often none does).
        let plain = self.threads.iter().find(|(_, t)| matches!(t.state, State::Stopped(Stop::Event | Stop::Signal(0))));
        if let Some(tid) = plain.map(|(tid, _)| *tid) {
            self.put_trap_action_back(tid);
        }
        self.close_traps();
        let mut running = BTreeSet::new();
        for (tid, thread) in std::mem::take(&mut self.threads) {
            if thread.is_stopped() {
                let (signal, group_stop) = self.leaving_with(tid, thread);
                let _ = self.let_thread_go(tid, signal, group_stop);
            } else {
                running.insert(tid);
            }
        }
        self.let_stragglers_go(running);
        self.let_early_children_go();
        self.sites.clear();
    }

    /// Threads given up on that have reported a stop meanwhile (one that trapped on dprobe's
    /// trampoline before its return address was put back, say) are let go as the held ones
    /// were, a trap of dprobe's consumed first. Nothing is waited for; each thread's status
    /// is read for it alone (another traced process's stays its own).
    fn let_stragglers_go(&mut self, mut running: BTreeSet<i32>) {
        let mut budget = 4 * running.len() + 16;
        while !running.is_empty() && budget > 0 {
            budget -= 1;
            let reported = running.iter().find_map(|&tid| match sys::try_wait(tid) {
                Ok(Some(got)) => Some(Ok(got)),
                Ok(None) => None,
                Err(_) => Some(Err(tid)),
            });
            let (tid, status) = match reported {
                Some(Ok(got)) => got,
                // No longer the tracer's.
                Some(Err(tid)) => {
                    running.remove(&tid);
                    continue;
                }
                None => return,
            };
            if !libc::WIFSTOPPED(status) {
                running.remove(&tid);
                continue;
            }
            let signal = libc::WSTOPSIG(status);
            let deliver = match sys::event_of(status) {
                0 if signal == libc::SIGTRAP && self.take_our_trap(tid).unwrap_or(false) => 0,
                0 => signal,
                EVENT_STOP if self.trap_pending(tid).unwrap_or(false) => {
                    // Its trap comes next: let it report it.
                    let _ = sys::cont(tid, 0);
                    continue;
                }
                EVENT_STOP | libc::PTRACE_EVENT_EXIT => 0,
                event => {
                    let _ = self.on_new_task(tid, event);
                    0
                }
            };
            let group_stop = crate::thread::is_group_stop(status);
            let _ = self.let_thread_go(tid, deliver, group_stop);
            running.remove(&tid);
        }
    }

    /// Move held thread `tid` out of dprobe's code: the out-of-line copies, the return stubs,
    /// the return trampoline.
    pub(crate) fn leave_dprobe_code(&mut self, tid: i32, slots: &[SlotCode]) -> Result<(), TraceError> {
        self.leave_slots(tid, slots)?;
        self.leave_stubs(tid)?;
        if let Some(trampoline) = self.xol.trampoline_addr() {
            let mut r = sys::get_regs(tid)?;
            if r.rip == trampoline.0 {
                // It returned to the trampoline and has not trapped yet.
                r.rip += 1;
                self.on_return_trap(tid, &mut r, false)?;
                sys::set_regs(tid, &r)?;
            }
        }
        Ok(())
    }

    /// Execute one instruction of held thread `tid`: it is at a single-step stop then (a
    /// signal-delivery stop of its own). A signal it was stopped to receive is given back to
    /// its queue, unchanged, as it steps (delivered from another stop, it would come as a
    /// `kill` from the tracer: see `kept`); one that cannot be stays the thread's to receive.
    pub(crate) fn step(&mut self, tid: i32) -> Result<(), TraceError> {
        let carried = self.threads.get(&tid).map_or(0, |t| t.signal());
        let given_back = inject::step(self.pid, tid, carried)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            if t.state == State::Stopped(Stop::Event) || given_back {
                t.state = State::Stopped(Stop::Signal(0));
            }
        }
        Ok(())
    }

    /// Let a stopped thread that is inside a return stub finish it (a few `mov`s and a jump to
    /// the real return address).
    fn leave_stubs(&mut self, tid: i32) -> Result<(), TraceError> {
        for _ in 0..16 {
            if !self.stubs.contains(Addr(sys::get_regs(tid)?.rip)) {
                return Ok(());
            }
            self.step(tid)?;
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
            self.step(tid)?;
        }
        Err(TraceError::Stuck { tid, place: "an out-of-line copy" })
    }
}

impl Drop for Tracee {
    /// A tracee that is dropped while traced is detached (see [`Tracee::detach`]).
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.detach_all(&|| false);
        }
    }
}

/// Whether process `pid` has no memory left: its threads are ending, or it is gone.
fn memory_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) => maps.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH),
    }
}
