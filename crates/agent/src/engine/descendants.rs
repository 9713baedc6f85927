//! The programs a traced program's children execute, each traced by an agent of its own (a
//! descendant engine, with the same probes): a child about to `exec` through the C library
//! (forked, or sharing the program's memory: `vfork`, `posix_spawn`, `system`) asks first in a
//! gate of its own in the shared memory (`exec_gate.rs`'s `child_asks`); its calling thread is
//! watched for that `exec` alone (ptrace), and the new program, held before its constructors,
//! gets the agent and the probes, then runs on, its own children followed in turn. Events come
//! from every descendant's ring with their pid; figures are summed over all of them.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};

use dprobe_core::{Addr, EventSink, Placement};
use dprobe_ptrace::{ExecWatch, Injector, LoadError, Watched};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::{load, AgentEngine, AgentError};
use crate::shm::{Counter, Shm};

impl AgentEngine {
    /// Hand the records of every ring to `sink` (the program's, its descendants'), each at most
    /// a ring's worth.
    pub(super) fn drain_all(&mut self, sink: EventSink<'_>) -> usize {
        let mine = self.drain(sink);
        mine + self.descendants.iter_mut().map(|d| d.drain_all(sink)).sum::<usize>()
    }

    /// A look at each program children executed (see [`AgentEngine::step`]).
    pub(super) fn step_descendants(&mut self, sink: EventSink<'_>, give_up: &dyn Fn() -> bool) {
        for d in &mut self.descendants {
            let ended = match d.step(sink, give_up) {
                Ok(ended) => ended.is_some(),
                Err(e) => {
                    d.lost = Some(e.to_string());
                    true
                }
            };
            if ended {
                while d.drain(sink) > 0 {}
                if d.status.is_some() {
                    // Its end was taken by the watch, as its tracer: its parent learns of it
                    // once the tracer has waited for it.
                    let _ = waitpid(Pid::from_raw(d.pid), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL));
                }
                d.stopped = true;
                d.done = true;
            }
        }
    }

    /// Children about to `exec` that asked first (`exec_gate.rs`'s `child_asks`): each one's
    /// calling thread seized for its `exec`, watched until it makes it.
    pub(super) fn answer_children_execs(&mut self) {
        use crate::exec_gate::{asker, wake, CLAIMED, IDLE, WATCHED};
        if !self.follow_children {
            return;
        }
        for i in 0..crate::shm::CHILD_GATES {
            let gate = self.shm.child_gate(i);
            let asked = gate.state.load(Acquire);
            let Some(tid) = asker(asked) else { continue };
            if gate.state.compare_exchange(asked, CLAIMED, AcqRel, Acquire).is_err() {
                continue;
            }
            // Read once claimed: the child keeps its gate until answered. Its ids are those it
            // has in its pid namespace, looked up among the processes that share the program's
            // memory for the agent (`ns_ids.rs`): never a process dprobe does not trace.
            let asking = gate.pid.load(Acquire) as i32;
            let found = self.shm.inode().and_then(|ring| super::ns_ids::sharing_thread(ring, self.pid, asking, tid));
            let Some((pid, tid)) = found else {
                self.unfollowed.push(format!(
                    "a child that numbers itself {asking} was not found among the processes the program \
                     forked: the program it executes is not traced"
                ));
                gate.state.store(IDLE, Release);
                wake(gate.state);
                continue;
            };
            let trap_ignored = crate::exec_gate::asker_ignores_trap(asked);
            let state = match self.child_watches.iter_mut().find(|w| w.pid() == pid) {
                // Asked again after an `exec` that failed: still watched.
                Some(watch) if watch.tid() == tid => {
                    watch.trap_ignored(trap_ignored);
                    WATCHED
                }
                // Another of its threads (one thread is watched per child): runs untraced.
                Some(_) => {
                    self.shm.child_untraced();
                    IDLE
                }
                None => match ExecWatch::seize_thread(pid, tid) {
                    Ok(mut watch) => {
                        watch.trap_ignored(trap_ignored);
                        self.child_watches.push(watch);
                        WATCHED
                    }
                    Err(e) => {
                        self.unfollowed.push(format!("process {pid} (a child) could not be watched for its exec: {e}"));
                        IDLE
                    }
                },
            };
            gate.state.store(state, Release);
            wake(gate.state);
        }
    }

    /// Look at the children watched for their `exec`: a new program is given an agent of its
    /// own (a descendant); a child that ended is handed on to its parent.
    pub(super) fn look_at_child_watches(&mut self, give_up: &dyn Fn() -> bool) {
        let mut i = 0;
        while i < self.child_watches.len() {
            let found = self.child_watches[i].poll();
            if let Ok(Watched::Running) = found {
                i += 1;
                continue;
            }
            let pid = self.child_watches.swap_remove(i).pid();
            let not_traced = match found {
                Ok(Watched::Executed(held)) => match self.descendant_of(*held, give_up) {
                    Ok(descendant) => {
                        self.descendants.push(descendant);
                        None
                    }
                    Err(e) => Some(format!("the agent could not be loaded into it ({e})")),
                },
                Ok(Watched::Ended(_)) => {
                    // Its end was taken by the watch, as its tracer: its parent learns of it
                    // once the tracer has waited for it.
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL));
                    None
                }
                Ok(Watched::Running | Watched::ThreadEnded) => None,
                Ok(Watched::Unheld(why)) | Err(LoadError::Refused { reason: why, .. }) => Some(why),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = not_traced {
                let program = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map_or_else(|_| "a program".into(), |p| format!("`{}`", p.display()));
                self.unfollowed.push(format!("process {pid} (a child) ran {program} (exec): not traced ({why})"));
            }
        }
    }

    /// Trace the program a child executed, `held` at its start: the agent loaded into it and
    /// given what this one was asked, the program then let go (watched for its own `exec`, as
    /// a started program is). Where that fails the program runs on untraced.
    pub(super) fn descendant_of(
        &self,
        mut held: Injector,
        give_up: &dyn Fn() -> bool,
    ) -> Result<AgentEngine, AgentError> {
        let pid = held.pid();
        let (listener, sock, shm) = match load(&mut held, &self.library, give_up) {
            Ok(loaded) => loaded,
            Err(e) => {
                // (Dropped held, it would be killed.)
                let _ = held.release();
                return Err(e);
            }
        };
        let mut d = AgentEngine::new(pid, Some(held), listener, sock, shm, self.library.clone(), self.events);
        // Not dprobe's child: its end is seen, not reaped, here.
        d.spawned = false;
        d.descendant = true;
        d.follow_children = self.follow_children;
        d.requests = self.requests.clone();
        d.filters = self.filters.clone();
        d.probes = self.probes.clone();
        d.values = self.values.clone();
        d.stacks = self.stacks;
        if d.stacks.is_some() {
            d.unwinder.prepare(pid as u32);
        }
        let started = d.place_again().and_then(|()| d.release());
        if let Err(e) = started {
            if let Some(held) = d.injector.take() {
                let _ = held.release();
            }
            return Err(e);
        }
        Ok(d)
    }

    /// Stop tracing the programs children executed (their agents remove their probes), and
    /// let go of the children watched for their `exec`: they run on untraced.
    pub(super) fn stop_descendants(&mut self) {
        for watch in self.child_watches.drain(..) {
            watch.end();
        }
        for d in &mut self.descendants {
            let _ = d.stop_agent();
            d.end_watch();
            // What their agents said as they removed their probes is the trace's too.
            let said = std::mem::take(&mut *d.finish_notes.lock().unwrap_or_else(|e| e.into_inner()));
            self.finish_notes.lock().unwrap_or_else(|e| e.into_inner()).extend(said);
        }
    }

    /// Counter `c` of probe `index`, summed over every program the process ran (`exec`) and
    /// every program its children executed.
    pub(super) fn counted(&self, index: usize, c: Counter) -> u64 {
        let mine = self.shm.get(index, c) + self.retired.iter().map(|shm| shm.get(index, c)).sum::<u64>();
        mine + self.descendants.iter().map(|d| d.counted(index, c)).sum::<u64>()
    }

    /// Where probe `index` is: in this program, or else where a program a child executed has it.
    pub(super) fn placement(&self, index: usize) -> Placement {
        let Some(p) = self.probes.get(index) else { return Placement::Waiting };
        let current = |c| self.shm.get(index, c);
        let here = match (&p.placement, current(Counter::PlacedAt), current(Counter::Loads)) {
            // Placed when its library was loaded; since unloaded, or placed still.
            (Placement::Waiting, 0, loads) if loads > 0 => Placement::Unloaded,
            (Placement::Waiting, at, _) if at != 0 => Placement::At(Addr(at)),
            (Placement::Waiting, _, _) if current(Counter::RefusedAtLoad) != 0 => Placement::Failed(
                "its library was loaded, and the agent could not resolve or place the probe there (the \
                 ptrace engine, `--engine ptrace`, resolves from outside the program)"
                    .into(),
            ),
            (placement, _, _) => placement.clone(),
        };
        if let Placement::At(_) = here {
            return here;
        }
        let elsewhere = self.descendants.iter().map(|d| d.placement(index)).find(|p| matches!(p, Placement::At(_)));
        elsewhere.unwrap_or(here)
    }

    /// The shared memories of this program's agents and of its descendants'.
    pub(super) fn every_shm<'a>(&'a self, all: &mut Vec<&'a Shm>) {
        all.push(&self.shm);
        all.extend(&self.retired);
        for d in &self.descendants {
            d.every_shm(all);
        }
    }

    /// What this trace and its descendants' have to say in the summary, each thing once.
    pub(super) fn said(&self, notes: &mut Vec<String>) {
        let lost = self.lost.iter().filter(|_| self.spawned || self.descendant);
        for note in self.exec_notes.iter().chain(lost).chain(&self.unfollowed) {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
        for d in &self.descendants {
            d.said(notes);
        }
    }
}
