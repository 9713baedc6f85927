//! The traced program's children: what each kind of new process gets from dprobe.
//!
//! - A child with a copy of the program's memory (`fork`, or `clone` without `CLONE_VM`)
//!   inherits the probes' `int3`s and the hijacked return addresses of the thread that forked
//!   but not the tracer: its copy gets the original code and return addresses back, and it is
//!   let go (as the kernel's uprobes do in `uprobe_dup_mmap`, and gdb's `detach_breakpoints`).
//! - A child that shares the program's memory (`vfork`, `posix_spawn`, `system()`, `clone`
//!   with `CLONE_VM`) runs over the very `int3`s the program's other threads need: nothing may
//!   be written for it. It is traced like one more thread of the program until it executes a
//!   new program (let go then: the new image has none of dprobe's code) or exits. Its hits are
//!   handled and counted like any other (it runs the program's code, in the program's memory,
//!   as the kernel's uprobes count it), and carry its own process id.
//!
//! Followed (`follow`), a forked child is traced as a process of its own, its copy of the
//! probes kept, and the returns pending in the thread that forked watched in its copy; a
//! `vfork` child is traced on when it executes a new program, whose probes are placed as
//! after any `exec`. Hits carry the child's process id.
//!
//! A child's first stop may be reported before its parent's fork event: it is kept stopped
//! until the event says what kind of child it is. Whichever traced process's wait reads that
//! stop, the event may come to another's (the program's, a followed child's), so such stops
//! are kept for every process this tracer thread traces. One whose event never comes (its
//! parent was killed in between) is let go, its copy of the code restored, when the process
//! it was read for is let go.

use std::cell::RefCell;
use std::collections::BTreeMap;

use dprobe_arch::Memory;
use dprobe_core::returns::InstancePool;
use dprobe_core::{Placement, ProbeId, Stats};

use crate::error::TraceError;
use crate::probes::Probe;
use crate::sys::{self, RemoteMemory};
use crate::thread::{Stop, Thread};
use crate::tracee::Tracee;

/// `kcmp` type: whether two processes share their memory (`KCMP_VM`).
const KCMP_VM: i32 = 1;

/// A new child whose first stop was read before its parent's fork event.
#[derive(Clone, Copy)]
struct Early {
    /// Its last wait status: the first stop, or its end if it was killed meanwhile.
    status: i32,
    /// The traced process it was read for (its parent's, by `/proc` at the time).
    parent: i32,
}

thread_local! {
    /// The new children waiting for their parent's event, for every process traced from this
    /// thread (ptrace requests, and so the waits, belong to the tracer thread).
    static EARLY: RefCell<BTreeMap<i32, Early>> = const { RefCell::new(BTreeMap::new()) };
}

/// Whether `tid` is a new child whose first stop was read and whose parent's event was not.
pub(crate) fn is_early(tid: i32) -> bool {
    EARLY.with(|e| e.borrow().contains_key(&tid))
}

/// The stop kept for new child `tid`, taken.
fn take_early(tid: i32) -> Option<i32> {
    EARLY.with(|e| e.borrow_mut().remove(&tid)).map(|e| e.status)
}

/// New child `tid` ended before its parent's event came: its end replaces its first stop.
pub(crate) fn early_child_ended(tid: i32, status: i32) {
    EARLY.with(|e| {
        if let Some(early) = e.borrow_mut().get_mut(&tid) {
            early.status = status;
        }
    });
}

/// New children still waiting for their parent's event when every traced process has been
/// let go: the process that made each is not traced any more, nothing is known of its code,
/// and it is let go as it is (the kernel would let it go when the tracing thread ends).
pub(crate) fn let_unclaimed_children_go() {
    let left = EARLY.with(|e| std::mem::take(&mut *e.borrow_mut()));
    for (tid, early) in left {
        if libc::WIFSTOPPED(early.status) {
            let _ = sys::detach(tid, 0);
        }
    }
}

impl Tracee {
    /// The process thread `tid` belongs to: the program, or a child sharing its memory.
    pub(crate) fn process_of(&self, tid: i32) -> i32 {
        if self.guests.contains(&tid) {
            tid
        } else {
            self.pid
        }
    }

    /// A stop of `tid` that is neither a known thread nor one of the program's: a new child
    /// whose parent's fork event has not been read yet. Kept stopped until it is.
    pub(crate) fn early_child(&mut self, tid: i32, status: i32) -> bool {
        if self.threads.contains_key(&tid) || sys::exists(self.pid, tid) || !is_process(tid) {
            return false;
        }
        EARLY.with(|e| e.borrow_mut().insert(tid, Early { status, parent: self.pid }));
        true
    }

    /// Children read for this process whose parent's fork event never came (the parent was
    /// killed between the fork and its event), once every thread of this process is held (no
    /// fork can be under way): let go as a child made while detaching is, their copy of the
    /// code restored. Best effort.
    pub(crate) fn let_early_children_go(&mut self) {
        let mine: Vec<i32> =
            EARLY.with(|e| e.borrow().iter().filter(|(_, c)| c.parent == self.pid).map(|(tid, _)| *tid).collect());
        for child in mine {
            if self.on_child(self.pid, child, 0, false).is_err() {
                let _ = sys::detach(child, 0);
            }
        }
    }

    /// Thread `parent` created process `child` (a fork, vfork or clone event). With the
    /// probes in the program's code (`armed`), a child sharing its memory is traced until it
    /// executes or exits; without (while attaching or detaching), it is let go at once.
    pub(crate) fn on_child(&mut self, parent: i32, child: i32, event: i32, armed: bool) -> Result<(), TraceError> {
        let status = match take_early(child) {
            Some(status) => status,
            None => sys::wait(child)?.1,
        };
        if !libc::WIFSTOPPED(status) {
            return Ok(()); // killed before it ran
        }
        let shared = shares_memory(self.process_of(parent), child).unwrap_or(event == libc::PTRACE_EVENT_VFORK);
        if !shared && armed && self.follow {
            // Its copy keeps the probes, and its copy of the forking thread the returns
            // pending in it, watched as the parent's are.
            let mut forked = self.forked(child)?;
            forked.returns = self.returns.carry_into_fork(parent, child, &self.stubs, &mut forked.memory);
            forked.stubs = self.stubs.clone();
            forked.activations = self.activations.carry_into_fork(parent, child);
            forked.trap_action_of_parent(self);
            for i in self.returns.pending_probes(parent).into_iter().chain(self.activations.pending_probes(parent)) {
                if let Some(p) = forked.probes.get_mut(&i) {
                    let _ = p.pool.take();
                }
            }
            self.followed.push(forked);
            return Ok(());
        }
        if shared && armed {
            self.guests.insert(child);
            self.threads.insert(child, Thread::running());
            return match sys::cont(child, 0) {
                Err(e) if e.gone() => Ok(()),
                other => Ok(other?),
            };
        }
        if !shared {
            self.untraced_children += u64::from(armed);
            let mut mem = RemoteMemory::open(child)?;
            for patch in self.sites.values().map(|s| s.prepared.disarm()) {
                // Only over dprobe's own `int3` (see `disarm_sites`).
                let mut now = vec![0u8; patch.old.len()];
                if mem.read(patch.addr, &mut now).is_ok() && now == patch.old {
                    let _ = mem.write(patch.addr, &patch.new);
                }
            }
            self.lower_semaphores_in(&mut mem);
            self.returns.restore_stack(parent, self.xol.trampoline_addr(), &self.stubs, &mut mem);
            self.put_trap_action_back_in_child(child, &mut mem);
        }
        match sys::detach(child, 0) {
            Err(e) if !e.gone() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A child sharing the program's memory executed a new program (thread `tid` is at the
    /// exec stop): none of dprobe's code is in it, it goes on untraced, or traced as a
    /// process of its own when followed. Its pending returns went with the old image.
    pub(crate) fn guest_executed(&mut self, tid: i32, follow: bool) -> Result<(), TraceError> {
        self.executed_as_renamed(tid);
        self.forget_guest(tid);
        if follow {
            let mut executed = self.executed(tid)?;
            let resumed = executed.resume_stopped();
            self.followed.push(executed);
            return resumed;
        }
        match sys::detach(tid, 0) {
            Err(e) if !e.gone() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Forget child `tid` (it exited, executed or was let go).
    pub(crate) fn forget_guest(&mut self, tid: i32) {
        self.guests.remove(&tid);
        self.threads.remove(&tid);
        self.forget_thread_returns(tid);
    }

    /// A child sharing the program's memory, held while dprobe lets the program go (the probes
    /// are out of the code already): moved out of dprobe's code, its return addresses put
    /// back, let go with its signal. It is not kept held with the others: its parent waits in
    /// `vfork` and cannot stop until the child executes or exits.
    pub(crate) fn let_guest_go(&mut self, tid: i32, stop: Stop) -> Result<(), TraceError> {
        self.threads.insert(tid, Thread::stopped(stop));
        let slots: Vec<_> = self.sites.values().filter_map(|s| s.prepared.slot.clone()).collect();
        match self.leave_dprobe_code(tid, &slots) {
            Err(TraceError::Gone { .. }) => {
                self.forget_guest(tid);
                return Ok(());
            }
            other => other?,
        }
        let trampoline = self.xol.trampoline_addr();
        self.returns.restore_stack(tid, trampoline, &self.stubs, &mut self.memory);
        let signal = self.threads.get(&tid).map_or(0, |t| t.signal());
        // A child asleep in a system call (its parent waits for it) is put back into it
        // unwoken when the tracer's thread is about to end, as the program's threads are.
        let let_go = self.let_thread_go(tid, signal, stop == Stop::Group);
        self.forget_guest(tid);
        match let_go {
            Err(e) if !e.is_gone() => Err(e),
            _ => Ok(()),
        }
    }
}

impl Tracee {
    /// Whether thread `tid` is one of this process's (or of a child sharing its memory).
    pub(crate) fn claims(&self, tid: i32) -> bool {
        self.threads.contains_key(&tid)
            || self.guests.contains(&tid)
            || EARLY.with(|e| e.borrow().get(&tid).is_some_and(|c| c.parent == self.pid))
    }

    /// Whether thread `tid`, not known yet, is a new thread of this process or a new child of
    /// it (its parent is this process, or a child sharing its memory). A thread's `PPid` is
    /// its process's parent: a new thread of a followed child names the child's parent there,
    /// and belongs to the child, never to that parent.
    pub(crate) fn may_claim(&self, tid: i32) -> bool {
        if sys::exists(self.pid, tid) {
            return true;
        }
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
        let field =
            |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<i32>().ok());
        match field("Tgid:") {
            Some(process) if process != tid => process == self.pid || self.guests.contains(&process),
            _ => field("PPid:").is_some_and(|p| p == self.pid || self.guests.contains(&p)),
        }
    }

    /// The probes, for a process followed from this one: the same handlers, figures of its
    /// own; placed where they are here when `placed` (a copy of this memory).
    fn shared_probes(&self, placed: bool) -> BTreeMap<ProbeId, Probe> {
        self.probes
            .iter()
            .map(|(id, p)| {
                let def = p.def.share();
                let pool = InstancePool::new(Some(def.maxactive));
                let placement = match p.stats.addr() {
                    Some(addr) if placed => Placement::At(addr),
                    _ => Placement::Waiting,
                };
                let stats = Stats { placement, ..Stats::default() };
                (*id, Probe { def, pool, stats })
            })
            .collect()
    }

    /// Child `child`, stopped at its start with a copy of this process's memory (a fork): the
    /// same probes, in the same places, through the same out-of-line pages.
    fn forked(&self, child: i32) -> Result<Tracee, TraceError> {
        // At its first stop (`PTRACE_EVENT_STOP`): nothing to deliver.
        let threads = BTreeMap::from([(child, Thread::stopped(Stop::Event))]);
        let mut t = Tracee::new(child, threads)?;
        t.sites = self.sites.clone();
        t.xol = self.xol.clone();
        t.probes = self.shared_probes(true);
        t.next_id = self.next_id;
        t.unwinders_watched = self.unwinders_watched;
        t.follow = true;
        t.renamed = self.renamed.clone();
        // Its copy of the counters is raised as this process's are.
        t.raised = self.raised.clone();
        Ok(t)
    }

    /// Child `child`, stopped at the `execve` of a new program after sharing this process's
    /// memory: the probes wait for their targets in the new program, as after any `exec`.
    fn executed(&self, child: i32) -> Result<Tracee, TraceError> {
        let threads = BTreeMap::from([(child, Thread::stopped(Stop::Event))]);
        let mut t = Tracee::new(child, threads)?;
        t.probes = self.shared_probes(false);
        t.next_id = self.next_id;
        t.follow = true;
        t.renamed = self.renamed.clone();
        // Its copy of the action was this process's, as dprobe's traps left it.
        t.trap_action_of_parent(self);
        t.trap_action_after_exec();
        // Out of `execve` first: its return would overwrite the result of a system call
        // injected at the exec stop (the out-of-line page's `mmap`).
        crate::inject::leave_event_stop(child, child)?;
        t.open_trap(child)?;
        t.on_exec(child)?;
        Ok(t)
    }
}

/// Whether `pid` is a process (a thread group's leader), not a thread of another.
fn is_process(pid: i32) -> bool {
    crate::proc_ids::thread_group_of(pid) == Some(pid)
}

/// Whether processes `a` and `b` share one memory; `None` when the kernel cannot say (built
/// without `kcmp`: the kind of fork event decides then, a `vfork` sharing it).
pub(crate) fn shares_memory(a: i32, b: i32) -> Option<bool> {
    // SAFETY: kcmp takes integers and reads nothing of ours.
    match unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) } {
        0 => Some(true),
        1 | 2 => Some(false),
        _ => None,
    }
}
