//! Following the traced program through its `exec`: the agent asked to ask first (or the
//! program watched with ptrace), the new program held while its agent is loaded and the probes
//! placed again, the agent leaving a thread that enters a new user namespace, and a program
//! not followed said so.

use super::*;
use crate::user_namespace::{agent_left_because, ALONE};

impl AgentEngine {
    /// Let a started program run, watched for its `exec`: from the moment it says it is about
    /// to, when its agent asks first (`exec_gate.rs`); else all along, with ptrace.
    pub(super) fn release_watching_exec(&mut self, held: Injector) -> Result<(), AgentError> {
        self.exec_gated = self.gate_exec();
        if self.exec_gated {
            held.release()?;
        } else {
            self.watch = Some(held.release_watching_exec()?);
        }
        Ok(())
    }

    /// Ask the agent to ask before an `exec` (the program's threads, and its children when
    /// followed): whether it will.
    pub(super) fn gate_exec(&mut self) -> bool {
        if self.tell(&Message::GateExec).is_err() {
            return false;
        }
        loop {
            match self.receive() {
                Ok(Some(Message::ExecGated(gated))) => return gated,
                Ok(Some(Message::Note(_) | Message::Detail(_))) => {}
                _ => return false,
            }
        }
    }

    /// The agent leaves the program, whose thread enters a new user namespace alone
    /// (`user_namespace.rs`): that thread is watched for its `exec` from now on, so that the
    /// program it executes gets an agent again; the agent goes once dprobe has seen it.
    pub(super) fn watch_as_the_agent_leaves(&mut self) {
        let Some((asking, why)) = self.shm.leaving_thread() else { return };
        // Too late (the agent went without dprobe): the program is said to be no longer
        // traced when its connection's end is seen.
        if !self.shm.claim_the_leaving() {
            return;
        }
        match (&self.watch, ns_ids::thread_of(self.pid, asking)) {
            // Watched already (its `exec` failed before).
            (Some(watch), Some(tid)) => self.agent_left = watch.tid() == tid,
            (None, Some(tid)) if !self.stopped => {
                if let Ok(watch) = ExecWatch::seize_thread(self.pid, tid) {
                    self.watch = Some(watch);
                    self.agent_left = true;
                    self.exec_gated = false;
                }
            }
            // Not found, or not watched: the program is said to be no longer traced.
            _ => {}
        }
        if self.agent_left {
            let until = if why == ALONE {
                "until its next exec (until then its calls, and its children's programs, were not traced)"
            } else {
                "(from then on its calls, and its children's programs, were not traced)"
            };
            self.unfollowed.push(format!(
                "process {} {}: the agent left it first {until}",
                self.pid,
                agent_left_because(why)
            ));
        }
        self.shm.let_the_agent_leave();
    }

    /// A thread of the program asked before its `exec` (`exec_gate.rs`): the request is
    /// claimed, the thread watched from now on, and let go. After an `exec` that failed, the
    /// program is let go again.
    pub(super) fn answer_exec(&mut self) {
        use crate::exec_gate::{asker, wake, CLAIMED, IDLE, RELEASE_AFTER, RELEASE_TRIES, RELEASING, UNWATCH, WATCHED};
        let words = self.shm.exec_gate();
        // Its `exec` failed a while ago: let go where the watched thread is outside a system call.
        if !self.exec_gated || words.state.load(Acquire) != UNWATCH {
            // Taken back (another `exec`), or done: the next failed `exec` starts afresh.
            self.release = LettingGo::default();
        } else if self.release.since.get_or_insert_with(Instant::now).elapsed()
            >= RELEASE_AFTER * (1 << self.release.tries)
            && words.state.compare_exchange(UNWATCH, RELEASING, AcqRel, Acquire).is_ok()
        {
            self.release.since = None;
            let next = match self.watch.take().map(ExecWatch::end_at_rest) {
                Some(Err((watch, executing))) => {
                    self.watch = Some(watch);
                    self.release.tries += 1;
                    // At a new program's `exec` (the watch reports it next), or tried enough.
                    if executing || self.release.tries >= RELEASE_TRIES {
                        WATCHED
                    } else {
                        UNWATCH
                    }
                }
                _ => IDLE,
            };
            words.state.store(next, Release);
            wake(words.state);
            return;
        }
        let asked = words.state.load(Acquire);
        let Some(asking) = asker(asked) else { return };
        if !self.exec_gated || words.state.compare_exchange(asked, CLAIMED, AcqRel, Acquire).is_err() {
            return;
        }
        // The thread's id as the program numbers it: dprobe's may differ (`ns_ids.rs`).
        let Some(tid) = ns_ids::thread_of(self.pid, asking) else {
            self.unwatched = Some(format!("its thread {asking} (by the program's numbering) could not be found"));
            words.state.store(IDLE, Release);
            wake(words.state);
            return;
        };
        let trap_ignored = crate::exec_gate::asker_ignores_trap(asked);
        let state = match &mut self.watch {
            Some(watch) if watch.tid() == tid => {
                watch.trap_ignored(trap_ignored);
                WATCHED
            }
            // (The agent asks only while no thread is watched: not met.)
            Some(_) => IDLE,
            None => match ExecWatch::seize_thread(self.pid, tid) {
                Ok(mut watch) => {
                    watch.trap_ignored(trap_ignored);
                    self.watch = Some(watch);
                    self.unwatched = None;
                    WATCHED
                }
                Err(e) => {
                    // The `exec` goes on unseen, said as any `exec` the agent cannot follow.
                    self.unwatched = Some(e.to_string());
                    IDLE
                }
            },
        };
        words.state.store(state, Release);
        wake(words.state);
    }

    /// Look at the program's watch: its end recorded, a new program it executed
    /// returned held (where the agent can be loaded into it).
    pub(super) fn look_at_the_program(&mut self) -> Option<Injector> {
        let watch = self.watch.as_mut()?;
        match watch.poll() {
            Ok(Watched::Running) => None,
            Ok(Watched::Ended(status)) => {
                self.watch = None;
                self.status = Some(status);
                None
            }
            Ok(Watched::Executed(held)) => {
                self.watch = None;
                Some(*held)
            }
            Ok(Watched::ThreadEnded) => {
                // The thread watched for its `exec` ended without one: the next asks again.
                use crate::exec_gate::{wake, IDLE, UNWATCH, WATCHED};
                self.watch = None;
                // (Where the agent had left, the connection's end is said now.)
                self.agent_left = false;
                self.release = LettingGo::default();
                let state = self.shm.exec_gate().state;
                for watched in [WATCHED, UNWATCH] {
                    let _ = state.compare_exchange(watched, IDLE, AcqRel, Acquire);
                }
                wake(state);
                None
            }
            Ok(Watched::Unheld(why)) | Err(dprobe_ptrace::LoadError::Refused { reason: why, .. }) => {
                self.watch = None;
                self.agent_left = false;
                self.not_followed(&why);
                None
            }
            Err(e) => {
                self.watch = None;
                self.agent_left = false;
                self.not_followed(&e.to_string());
                None
            }
        }
    }

    /// The connection of the agent ended as the process executed a new program: whether the
    /// watch sees that `exec` (it comes to the tracer a moment after the old program's files
    /// are closed); it then loads the agent again, so the old agent is not lost.
    pub(super) fn exec_seen(&mut self) -> bool {
        if self.watch.is_none() {
            return false;
        }
        // (The kernel ends the program's other threads before the `exec` is reported: on a
        // loaded machine that has taken more than 2 s.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.watch.is_none() {
                // Ended, or the new program could not be held (said already).
                return true;
            }
            if let Some(held) = self.look_at_the_program() {
                self.pending = Some(held);
                return true;
            }
            self.wait_for_the_program(Duration::from_millis(1), self.shm.tracer_bell().load(Acquire));
        }
        false
    }

    /// The process executed a new program: the agent is loaded into it again (held before
    /// its libraries' constructors), given the same probes, and counts on into the same
    /// figures; the old agent's last records are read first.
    pub(super) fn executed(&mut self, mut held: Injector, sink: EventSink<'_>, give_up: &dyn Fn() -> bool) {
        while self.drain(sink) > 0 {}
        match self.load_again(&mut held, give_up).and_then(|()| self.arm()) {
            Ok(()) => {
                if let Err(e) = self.release_watching_exec(held) {
                    self.not_followed(&e.to_string());
                }
            }
            Err(e) => {
                let _ = held.release();
                self.not_followed(&e.to_string());
            }
        }
    }

    /// Say that the program the process executed is not traced, and why.
    pub(super) fn not_followed(&mut self, why: &str) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.lost = Some(format!(
            "process {} ran {} (exec): the agent could not be loaded into it ({why}); not traced from then on",
            self.pid,
            self.program()
        ));
    }

    pub(super) fn load_again(&mut self, held: &mut Injector, give_up: &dyn Fn() -> bool) -> Result<(), AgentError> {
        let (listener, sock, shm) = load(held, &self.library, give_up)?;
        self.listeners.push(listener);
        let old = std::mem::replace(&mut self.shm, shm);
        self.retired.push(old);
        self.sock = sock;
        self.ended_with_agent_there = None;
        self.agent_left = false;
        self.place_again()
    }

    /// Ask a new agent for what the first was asked: children followed, the probes, the filters.
    pub(super) fn place_again(&mut self) -> Result<(), AgentError> {
        if self.follow_children {
            self.tell(&Message::Children(true)).map_err(|e| self.agent_err(e))?;
        }
        let program = self.program();
        for request in self.requests.clone() {
            let (target, index) = (request.target.clone(), request.index as usize);
            self.tell(&Message::Place(request)).map_err(|e| self.agent_err(e))?;
            // What the agent says before its answer was said for the first program already.
            let mut answer = self.receive();
            while let Ok(Some(Message::Note(_) | Message::Detail(_))) = answer {
                answer = self.receive();
            }
            match answer {
                Ok(Some(Message::Placed(wire::Placement::Failed(why)))) => {
                    self.exec_notes.push(format!("`{target}` is not probed in {program} (exec): {why}"));
                }
                Ok(Some(Message::Placed(wire::Placement::At(a) | wire::Placement::Returns(a, _)))) => {
                    // Where it is now (it may have waited for a library in the old program).
                    if let Some(probe) = self.probes.get_mut(index) {
                        probe.placement = Placement::At(Addr(a));
                    }
                }
                Ok(Some(Message::Placed(_))) => {}
                Ok(_) => return Err(self.agent_err(io::Error::new(io::ErrorKind::UnexpectedEof, "it went away"))),
                Err(e) => return Err(self.agent_err(e)),
            }
        }
        for message in self.filters.clone() {
            self.tell(&message).map_err(|e| self.agent_err(e))?;
            let _ = self.receive();
        }
        Ok(())
    }

    /// Let go of the new program the process executed, held for the agent it has not been
    /// given yet (the trace ends first): it runs on untraced, from where it was held.
    pub(super) fn let_the_new_program_go(&mut self) {
        if let Some(held) = self.pending.take() {
            // (Dropped held, it would be killed.)
            let _ = held.release();
        }
    }
}
