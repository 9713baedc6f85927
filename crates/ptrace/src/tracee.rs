//! A traced process: spawning or attaching, the stop loop, and each kind of stop.

use std::collections::{BTreeMap, BTreeSet};

use dprobe_arch::{emulate, Addr, EmulateError, ExecPlan, Memory, INT3};
use dprobe_core::ProbeId;

use crate::error::{Exit, Stopped, TraceError};
use crate::loader::StartWatch;
use crate::probes::{file_base, Hit, HitKind, Probe, Site};
use crate::returns::Returns;
use crate::stubs::Stubs;
use crate::sys::{self, RemoteMemory};
use crate::thread::{is_stop_signal, resume, State, Stop, Thread};
use crate::xol::Xol;

/// `PTRACE_EVENT_STOP`: a seized thread stopped by `PTRACE_INTERRUPT`, a new thread's first
/// stop, or a group-stop.
pub(crate) const EVENT_STOP: i32 = 128;

/// A process under the tracer's control. It is bound to the thread that created it (ptrace
/// requests must come from the tracer thread).
pub struct Tracee {
    pub(crate) pid: i32,
    /// Every thread, with its state.
    pub(crate) threads: BTreeMap<i32, Thread>,
    pub(crate) memory: RemoteMemory,
    pub(crate) sites: BTreeMap<Addr, Site>,
    pub(crate) probes: BTreeMap<ProbeId, Probe>,
    pub(crate) xol: Xol,
    pub(crate) returns: Returns,
    /// Calls of functions whose exits are watched, per thread.
    pub(crate) activations: crate::exits::Activations,
    /// How each return probe watches its returns, where it is placed.
    pub(crate) return_modes: std::collections::HashMap<ProbeId, crate::exits::ReturnMode>,
    pub(crate) stubs: Stubs,
    pub(crate) next_id: u64,
    pub(crate) exit: Option<Exit>,
    /// Children sharing the program's memory (`vfork`), traced until they execute or exit.
    pub(crate) guests: BTreeSet<i32>,
    pub(crate) start: StartWatch,
    /// Whether unwinders are watched (there are return probes).
    pub(crate) unwinders_watched: bool,
    /// The files mapped at the dynamic linker's last notification, with where.
    pub(crate) objects: BTreeSet<(u64, String)>,
    /// Follow the program's children: each is traced as a process of its own.
    pub(crate) follow: bool,
    /// Children to follow, made since the tracer last took them.
    pub(crate) followed: Vec<Tracee>,
    /// Children let go untraced because they are not followed: forks, and the programs that
    /// children sharing the program's memory executed (the summary says so).
    pub(crate) untraced_children: u64,
    /// Not `Send`: see above.
    _tracer_thread: std::marker::PhantomData<*const ()>,
    /// When the breakpoints were last looked at (see `rearm`).
    pub(crate) breakpoints_checked: std::time::Instant,
    /// Static probes' semaphores raised in this process: by which probe, where (see
    /// `semaphores`).
    pub(crate) raised: Vec<(ProbeId, Addr)>,
    /// Probes whose semaphore could not be raised here, and why.
    pub(crate) unraised: Vec<(ProbeId, String)>,
    /// Whether letting it go may leave threads traced by the calling thread until that thread
    /// ends (see [`Tracee::let_go_as_thread_ends`]).
    pub(crate) ends_with_thread: bool,
    /// Threads sent back to a probed instruction by a fault of its copy, with the address and
    /// the stack pointer (`signals.rs`): the trap there when the program's handler returns is
    /// the same hit, counted already.
    pub(crate) faulted_at: BTreeMap<i32, (u64, u64)>,
    /// The registers each thread was resumed with from its last trap of dprobe's: a `SIGTRAP`
    /// the program sent it that stops it with them all, before it ran on (just past a site,
    /// after an emulated one-byte instruction, at once or once a handler of the program's
    /// returned there), is the program's, not another hit. A hit there has the registers of
    /// before the instruction, which its effect tells apart (taken for a hit, the instruction
    /// ran twice: `push %rbp`, and the program crashed); an instruction with no effect on them
    /// is as well skipped.
    pub(crate) resumed_at: BTreeMap<i32, libc::user_regs_struct>,
    /// The threads that blocked `SIGTRAP` when attached (`trap_mask.rs`).
    pub(crate) trap_masks: crate::trap_mask::TrapMasks,
    /// The program's `SIGTRAP` action, to put back where a trap replaced it (`trap_action.rs`).
    pub(crate) trap_action: crate::trap_action::TrapAction,
    /// Told of a thread whose name the tracer may know and that no longer holds: one that
    /// executed a program (the kernel names it after the program) or ended (its number may
    /// come back for another thread). Called before any hit of the thread's under its new
    /// name, after the returns it made under the old one.
    pub(crate) renamed: Option<std::rc::Rc<dyn Fn(i32)>>,
    /// Stop signals and group-stops held, and whether a `SIGCONT` was taken in the same hold
    /// (`continued.rs`).
    pub(crate) held_stops: crate::continued::HeldStops,
}

impl Tracee {
    pub(crate) fn new(pid: i32, threads: BTreeMap<i32, Thread>) -> Result<Tracee, TraceError> {
        Ok(Tracee {
            pid,
            threads,
            memory: RemoteMemory::open(pid)?,
            sites: BTreeMap::new(),
            probes: BTreeMap::new(),
            xol: Xol::default(),
            returns: Returns::default(),
            activations: Default::default(),
            return_modes: Default::default(),
            stubs: Stubs::default(),
            next_id: 0,
            exit: None,
            guests: BTreeSet::new(),
            start: StartWatch::default(),
            unwinders_watched: false,
            objects: BTreeSet::new(),
            follow: false,
            followed: Vec::new(),
            untraced_children: 0,
            _tracer_thread: std::marker::PhantomData,
            breakpoints_checked: std::time::Instant::now(),
            raised: Vec::new(),
            unraised: Vec::new(),
            ends_with_thread: false,
            faulted_at: BTreeMap::new(),
            resumed_at: BTreeMap::new(),
            trap_masks: Default::default(),
            trap_action: Default::default(),
            renamed: None,
            held_stops: Default::default(),
        })
    }

    /// Start `program` with `args`, stopped before its first instruction (right after
    /// `execve`). It is not killed with its tracer (no `PTRACE_O_EXITKILL`): a tracer that
    /// may die keeps a process that outlives it to detach cleanly (as `dprobe trace` does).
    pub fn spawn(program: &str, args: &[&str]) -> Result<Tracee, TraceError> {
        Tracee::spawn_as(program, program, args)
    }

    /// [`Tracee::spawn`], the program told that it was started as `argv0` (its `argv[0]`).
    pub fn spawn_as(program: &str, argv0: &str, args: &[&str]) -> Result<Tracee, TraceError> {
        let spawn_err = |reason| TraceError::Spawn { program: program.to_owned(), reason };
        let (c_program, c_args) = sys::command_line(program, argv0, args).map_err(spawn_err)?;
        // Seized as -p seizes (one regime for every thread dprobe traces): a group-stop is
        // reported as one, and kept with PTRACE_LISTEN, where the stop of a thread traced with
        // PTRACE_TRACEME could not be told from the SIGSTOP that delivers it, and dprobe,
        // which stopped threads with SIGSTOPs of its own, took the program's for its own: a
        // started program never stopped for Ctrl-Z, `kill -STOP` or its own `raise(SIGSTOP)`.
        // The other options once it executes: with PTRACE_O_TRACEEXIT, a child whose `execv`
        // failed would stop on its way out, never reaped here.
        let pid = sys::fork_seized(&c_program, &c_args, libc::PTRACE_O_TRACEEXEC as u64).map_err(spawn_err)?;
        match sys::wait_for_exec(pid)? {
            Ok(()) => {}
            Err(ended) => return Err(TraceError::not_started(program, ended)),
        }
        let options = libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_TRACEEXIT;
        sys::set_options(pid, options as u64)?;
        let mut tracee = Tracee::new(pid, BTreeMap::from([(pid, Thread::stopped(Stop::Event))]))?;
        // Before the step's trap.
        tracee.trap_action_after_exec();
        // Held at its first instruction, out of `execve`, whose return would overwrite the
        // result of a system call injected at the exec stop.
        crate::inject::leave_event_stop(pid, pid)?;
        // A mask inherited with SIGTRAP blocked: opened for dprobe's traps, the program's
        // again when it is let go (as at an attach).
        tracee.open_trap(pid)?;
        Ok(tracee)
    }

    /// Attach to running process `pid`: every thread is seized and stopped, threads it
    /// creates later are followed. Detaching (or dropping the `Tracee`) lets it go on as if
    /// it had never been traced.
    pub fn attach(pid: i32) -> Result<Tracee, TraceError> {
        let attach_err = |reason: String| TraceError::Attach { pid, reason };
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(attach_err("no such process".into()));
        }
        if pid == std::process::id() as i32 {
            return Err(attach_err("it is dprobe itself (use the in-process engine)".into()));
        }
        if let Some(why) = crate::memory_sharers::shared_memory_refusal(pid) {
            return Err(attach_err(why));
        }
        let mut threads = BTreeMap::new();
        // Threads that exited before they could be seized (listed until they are reaped).
        let mut exiting = BTreeSet::new();
        seize_listed(pid, &mut threads, &mut exiting)?;
        let mut tracee = Tracee::new(pid, threads)?;
        // A clone under way while the threads were listed makes a thread that neither the
        // list nor the kernel's following shows (the kernel decides whether to follow it
        // as the clone starts): left running, it would meet the probes untraced and die of
        // their SIGTRAP. Once every known thread is stopped none can clone, so the list is
        // read again until it holds no thread that is not held.
        loop {
            if let Err(e) = tracee.stop_all(&|| false) {
                // Nothing is placed yet: the threads that stopped are let go, the others when
                // the tracing thread ends.
                tracee.let_held_go();
                return Err(match e {
                    TraceError::Blocked { reason, .. } => TraceError::Attach { pid, reason },
                    e => e,
                });
            }
            let mut late = std::mem::take(&mut tracee.threads);
            let known = late.len();
            let seized = seize_listed(pid, &mut late, &mut exiting);
            tracee.threads = late;
            if let Err(e) = seized {
                tracee.let_held_go();
                return Err(e);
            }
            if tracee.threads.len() == known {
                break;
            }
        }
        if tracee.threads.is_empty() {
            return Err(TraceError::Attach { pid, reason: "it exited".into() });
        }
        if tracee.trap_action_unknown() {
            if let Ok(tid) = tracee.a_stopped_thread() {
                tracee.note_trap_action(tid);
            }
        }
        tracee.note_trap_masks();
        Ok(tracee)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Run until the program reaches its entry point, where the dynamic loader has mapped its
    /// libraries (probes on them can then be placed).
    pub fn run_to_entry(&mut self) -> Result<(), TraceError> {
        self.a_stopped_thread()?;
        let entry = auxv_entry(self.pid)?;
        let mut original = [0u8];
        self.read(entry, &mut original)?;
        if self.sites.contains_key(&entry) {
            return Err(TraceError::EntryProbed);
        }
        self.write(entry, &[INT3])?;
        self.resume_stopped()?;
        loop {
            let (t, status) = sys::wait(-1)?;
            if libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP && sys::event_of(status) == 0 {
                let mut r = sys::get_regs(t)?;
                if r.rip == entry.0 + 1 {
                    self.write(entry, &original)?;
                    r.rip = entry.0;
                    sys::set_regs(t, &r)?;
                    self.threads.insert(t, Thread::stopped(Stop::Signal(0)));
                    return Ok(());
                }
            }
            if let Some(exit) = self.handle(t, status)? {
                return Err(TraceError::EndedBeforeEntry(exit));
            }
        }
    }

    /// A thread the tracer holds stopped, to act through (placing a probe, mapping a page):
    /// one with no signal to receive when there is one. A thread stopped to receive a signal
    /// has it given back to its queue first: resumed from another stop, it would receive it
    /// as a `kill` from the tracer (see `kept`).
    pub(crate) fn a_stopped_thread(&mut self) -> Result<i32, TraceError> {
        let stopped = || self.threads.iter().filter(|(_, t)| t.is_stopped());
        let plain = stopped().find(|(_, t)| matches!(t.state, State::Stopped(Stop::Event | Stop::Signal(0))));
        let (tid, signal) =
            plain.or_else(|| stopped().next()).map(|(tid, t)| (*tid, t.signal())).ok_or(TraceError::NotStopped)?;
        if signal != 0 && crate::inject::give_back_signal(tid, &mut self.memory, signal)? {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.state = State::Stopped(Stop::Signal(0));
            }
        }
        Ok(tid)
    }

    pub(crate) fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), TraceError> {
        Ok(self.memory.read(addr, buf)?)
    }

    pub(crate) fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), TraceError> {
        Ok(self.memory.write(addr, data)?)
    }

    /// Resume the program and trace it until it ends; returns how it ended.
    pub fn run(&mut self) -> Result<Exit, TraceError> {
        self.resume_stopped()?;
        loop {
            let (tid, status) = sys::wait(-1)?;
            if let Some(exit) = self.handle(tid, status)? {
                return Ok(exit);
            }
        }
    }

    /// Resume the program and trace it until it ends or `should_stop` says so. It is asked
    /// after every stop and whenever a signal interrupts the wait, so a signal handler that
    /// sets a flag (Ctrl-C, a timer for `--duration`) ends the run promptly.
    pub fn run_until(&mut self, should_stop: &mut dyn FnMut() -> bool) -> Result<Stopped, TraceError> {
        self.resume_stopped()?;
        loop {
            self.check_breakpoints_now_and_then();
            if should_stop() {
                return Ok(Stopped::Asked);
            }
            match sys::wait_interruptible(-1)? {
                Some((tid, status)) => {
                    if let Some(exit) = self.handle(tid, status)? {
                        return Ok(Stopped::Exited(exit));
                    }
                }
                None => self.collect_returns(),
            }
        }
    }

    /// Trace for at most `duration`: `Some` when the program ended within it, `None` when it
    /// still runs (traced, until [`Tracee::detach`] or another `run`).
    pub fn run_for(&mut self, duration: std::time::Duration) -> Result<Option<Exit>, TraceError> {
        self.resume_stopped()?;
        let deadline = std::time::Instant::now() + duration;
        while std::time::Instant::now() < deadline {
            self.check_breakpoints_now_and_then();
            match sys::try_wait_any()? {
                Some((tid, status)) => {
                    if let Some(exit) = self.handle(tid, status)? {
                        return Ok(Some(exit));
                    }
                }
                None => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
        Ok(None)
    }

    /// Resume every held thread. One whose resumption fails stays held (detaching must
    /// know); one that is gone is left to report its exit.
    pub(crate) fn resume_stopped(&mut self) -> Result<(), TraceError> {
        let held: Vec<(i32, Stop)> = self
            .threads
            .iter()
            .filter_map(|(tid, t)| match t.state {
                State::Stopped(stop) => Some((*tid, stop)),
                _ => None,
            })
            .collect();
        for (tid, stop) in held {
            let stop = match stop {
                // A `SIGCONT` came after the stop it holds (`continued.rs`).
                Stop::Group | Stop::Signal(_) if self.stop_continued(tid, stop) => match stop {
                    Stop::Group => Stop::Event,
                    _ => Stop::Signal(0),
                },
                Stop::Signal(signal) => match self.deliverable(tid, signal) {
                    Ok(signal) => Stop::Signal(signal),
                    Err(TraceError::Gone { .. }) => {
                        self.set_running(tid);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                other => other,
            };
            match resume(tid, stop) {
                Ok(()) | Err(TraceError::Gone { .. }) => self.set_running(tid),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether held thread `tid`'s stop (a stop signal to deliver, or a group-stop) is to be
    /// dropped as it leaves it: a `SIGCONT` came after it (`continued.rs`).
    pub(crate) fn stop_continued(&mut self, tid: i32, stop: Stop) -> bool {
        let pid = self.process_of(tid);
        match stop {
            Stop::Group => self.held_stops.continued(pid, tid, 0, true),
            Stop::Signal(signal) => self.held_stops.continued(pid, tid, signal, false),
            Stop::Event => false,
        }
    }

    /// The signal held thread `tid` leaves its stop with as it is let go, and whether it stays
    /// in its group-stop; neither where a `SIGCONT` came after it.
    pub(crate) fn leaving_with(&mut self, tid: i32, thread: Thread) -> (i32, bool) {
        match thread.state {
            State::Stopped(stop @ (Stop::Group | Stop::Signal(_))) if self.stop_continued(tid, stop) => (0, false),
            _ => (thread.signal(), thread.state == State::Stopped(Stop::Group)),
        }
    }

    fn set_running(&mut self, tid: i32) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state = State::Running;
        }
    }

    /// One wait status; `Some` when the process is gone. A thread killed while the tracer
    /// handles its stop (`SIGKILL` needs no tracer's leave) is not an error: its exit comes
    /// next.
    pub(crate) fn handle(&mut self, tid: i32, status: i32) -> Result<Option<Exit>, TraceError> {
        match self.handle_status(tid, status) {
            Err(TraceError::Gone { .. }) => Ok(None),
            other => other,
        }
    }

    fn handle_status(&mut self, tid: i32, status: i32) -> Result<Option<Exit>, TraceError> {
        // Returns recorded by stubs happened before this stop: report them first.
        self.collect_returns();
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.thread_exited(tid, status);
            if self.threads.is_empty() {
                return Ok(Some(self.exit.unwrap_or(Exit::Code(0))));
            }
            return Ok(None);
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(None);
        }
        if self.early_child(tid, status) {
            return Ok(None);
        }
        let signal = libc::WSTOPSIG(status);
        match sys::event_of(status) {
            0 => {}
            libc::PTRACE_EVENT_CLONE => {
                let new = sys::event_message(tid)? as i32;
                self.note_trap_action_at_event(tid)?;
                if sys::exists(self.pid, new) {
                    self.threads.entry(new).or_insert(Thread::running());
                    self.inherit_trap_mask(tid, new);
                } else if crate::family::is_early(new) || sys::exists(new, new) {
                    // A clone that made a process, not a thread.
                    self.on_child(tid, new, libc::PTRACE_EVENT_CLONE, true)?;
                }
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            event @ (libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK) => {
                let child = sys::event_message(tid)? as i32;
                if event == libc::PTRACE_EVENT_FORK {
                    // (Not at a `vfork`: the parent's next instruction waits for the child.)
                    self.note_trap_action_at_event(tid)?;
                }
                self.on_child(tid, child, event, true)?;
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            libc::PTRACE_EVENT_EXEC if self.guests.contains(&tid) => {
                self.untraced_children += u64::from(!self.follow);
                self.guest_executed(tid, self.follow)?;
                return Ok(None);
            }
            libc::PTRACE_EVENT_EXEC => {
                self.executed_as_renamed(tid);
                self.threads.retain(|t, _| *t == tid);
                self.resumed_at.clear();
                // Before the step's trap.
                self.trap_action_after_exec();
                // Probes are placed (and pages mapped) from the new program's first
                // instruction, not from inside `execve`.
                crate::inject::leave_event_stop(self.pid, tid)?;
                // A mask that blocks SIGTRAP, kept through `execve` (the new program's, as
                // untraced): opened for dprobe's traps, as at the start.
                self.open_trap(tid)?;
                self.on_exec(tid)?;
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            EVENT_STOP => {
                // A seized thread's first stop, or a group-stop: a stopped program stays
                // stopped (`PTRACE_LISTEN`) until it is continued.
                self.threads.entry(tid).or_insert(Thread::running());
                self.open_trap(tid)?;
                if is_stop_signal(signal) {
                    sys::listen(tid)?;
                } else {
                    sys::cont(tid, 0)?;
                }
                return Ok(None);
            }
            _ => {
                sys::cont(tid, 0)?;
                return Ok(None);
            }
        }
        // A new thread's first stop may come before its parent's clone event.
        self.threads.entry(tid).or_insert(Thread::running());
        if signal == libc::SIGTRAP {
            let deliver = self.on_trap(tid)?;
            let deliver = self.deliverable(tid, deliver)?;
            if self.start.reached.is_none_or(|(held, _)| held != tid) {
                sys::cont(tid, deliver)?;
            }
            return Ok(None);
        }
        self.deliver_signal(tid, signal)?;
        Ok(None)
    }

    /// Thread `tid` ended with wait `status`: forget it; the process's exit when it is the
    /// main thread.
    pub(crate) fn thread_exited(&mut self, tid: i32, status: i32) {
        self.tell_renamed(tid);
        crate::family::early_child_ended(tid, status);
        self.guests.remove(&tid);
        self.threads.remove(&tid);
        self.resumed_at.remove(&tid);
        self.forget_thread_returns(tid);
        self.forget_trap_mask(tid);
        if tid == self.pid {
            self.exit = Some(if libc::WIFEXITED(status) {
                Exit::Code(libc::WEXITSTATUS(status))
            } else {
                Exit::Signal(libc::WTERMSIG(status))
            });
        }
    }

    /// Thread `tid`, at its exec stop, runs a new program, under the program's name; a thread
    /// other than the main one that executed has taken the main one's number and left its own.
    pub(crate) fn executed_as_renamed(&self, tid: i32) {
        self.tell_renamed(tid);
        match sys::event_message(tid) {
            Ok(former) if former as i32 != tid => self.tell_renamed(former as i32),
            _ => {}
        }
    }

    /// Tell whoever keeps threads' names that thread `tid`'s no longer holds (see `renamed`).
    fn tell_renamed(&self, tid: i32) {
        if let Some(renamed) = &self.renamed {
            renamed(tid);
        }
    }

    /// A `SIGTRAP` stop: a probe hit or a return (returns 0: consumed), or the program's own
    /// trap (returns `SIGTRAP`, to be delivered).
    fn on_trap(&mut self, tid: i32) -> Result<i32, TraceError> {
        let mut r = sys::get_regs(tid)?;
        let resumed_at = self.resumed_at.get(&tid).copied();
        let key = Addr(r.rip.wrapping_sub(1));
        // The program's own SIGTRAP, taken in place of this trap, goes on as the signal the
        // thread resumes with: kept pending, with its information, where the program blocks
        // it (`deliverable`); queued again, it would be delivered where the thread resumes.
        let own = match Some(key) == self.xol.trampoline_addr() || self.sites.contains_key(&key) {
            true => self.trap_taken(tid)?,
            false => None,
        };
        // One the program sent stopped the thread where dprobe resumed it, before it ran on
        // (see `resumed_at`): no hit.
        if own.is_some() && resumed_at.is_some_and(|at| crate::sys::same_registers(&at, &r)) {
            return Ok(libc::SIGTRAP);
        }
        if Some(key) == self.xol.trampoline_addr() {
            self.unwinding_over(tid);
            self.on_return_trap(tid, &mut r, true)?;
            sys::set_regs(tid, &r)?;
            self.resumed_at.insert(tid, r);
            return Ok(if own.is_some() { libc::SIGTRAP } else { 0 });
        }
        let pid = self.process_of(tid);
        let Some(site) = self.sites.get(&key) else { return Ok(libc::SIGTRAP) };
        // (A child sharing the memory has actions of its own: a `posix_spawn` child sets
        // every handler to the default.)
        if site.sigaction_watch && pid == self.pid {
            // The program reads its `SIGTRAP` action (alone, or as it sets another): the one
            // a trap of dprobe's replaced (this one's, where the program ignores `SIGTRAP`) is
            // put back first, so that the call reads the program's own.
            if r.rdi == libc::SIGTRAP as u64 && r.rdx != 0 && own.is_none() {
                self.put_trap_action_back(tid);
            }
            self.sigaction_called(r.rdi, r.rsi);
        }
        // The instruction again after its copy faulted and the program's handler returned:
        // only the instruction runs.
        if self.faulted_at.remove(&tid) != Some((key.0, r.rsp)) {
            self.hit_site(tid, pid, key, &mut r)?;
        }
        let site = &self.sites[&key];
        let mut regs = sys::to_regs(&r);
        regs.rip = key.0;
        let mut deliver = 0;
        let mut faulted = None;
        match site.prepared.plan {
            ExecPlan::Emulate(e) => {
                if let Err(EmulateError::Fault(fault)) =
                    emulate(e, site.prepared.insn.next(), &mut regs, &mut self.memory)
                {
                    // The original would have faulted: let the program see the fault there.
                    regs.rip = key.0;
                    deliver = libc::SIGSEGV;
                    faulted = Some(fault.addr);
                }
            }
            ExecPlan::Slot(_) => regs.rip = site.prepared.slot.as_ref().map_or(key.0, |s| s.entry().0),
        }
        sys::from_regs(&regs, &mut r);
        sys::set_regs(tid, &r)?;
        self.resumed_at.insert(tid, r);
        if let Some(addr) = faulted {
            self.emulated_fault(tid, pid, key, r.rsp, addr)?;
        }
        match own {
            Some(_) if deliver == 0 => deliver = libc::SIGTRAP,
            // The fault the program sees goes first.
            Some(info) => self.queue_own_trap_again(tid, &info),
            None => {}
        }
        let site = &self.sites[&key];
        let (loader_hook, unwinder, catcher) = (site.loader_hook, site.unwinder, site.catcher);
        if unwinder {
            self.unwinding(tid);
        } else if catcher {
            self.caught(tid, r.rsp)?;
        }
        if loader_hook {
            self.on_loads_changed(tid)?;
            if self.at_start() {
                self.start.reached = Some((tid, deliver));
            }
        }
        Ok(deliver)
    }

    /// The probes of the site at `key` hit by thread `tid` of process `pid`, whose registers
    /// `r` their handlers may change: handlers run, calls of watched functions entered and
    /// left, return addresses taken.
    fn hit_site(&mut self, tid: i32, pid: i32, key: Addr, r: &mut libc::user_regs_struct) -> Result<(), TraceError> {
        let site = &self.sites[&key];
        if !site.unwinder && !site.catcher {
            self.unwinding_over(tid);
        }
        let mut regs = sys::to_regs(r);
        regs.rip = key.0;
        // An exit of another function (shared code) leaves before this entry; a function
        // whose first instruction is an exit (`f: jmp g`) leaves after its own entry.
        let (own_exit, other_exits): (Vec<_>, Vec<_>) =
            self.sites[&key].exit_of.iter().copied().partition(|(function, _)| *function == key);
        if !other_exits.is_empty() {
            self.leave_watched(tid, &mut regs, &other_exits);
        }
        let in_file = file_base(&self.sites, key);
        let site = self.sites.get_mut(&key).expect("looked up");
        let mut has_return = false;
        let hijacked = self.returns.hijacked(tid);
        for id in &site.probes {
            let Some(p) = self.probes.get_mut(id) else { continue };
            p.stats.hits += 1;
            has_return |= p.def.on_return.is_some() && !site.exit_probes.contains(id);
            if let Some(handler) = p.def.on_entry.as_ref() {
                let memory: &mut RemoteMemory = &mut self.memory;
                (handler.borrow_mut())(&mut Hit {
                    probe: *id,
                    pid,
                    tid,
                    regs: &mut regs,
                    fs_base: r.fs_base,
                    file_base: in_file,
                    memory,
                    kind: HitKind::Entry,
                    hijacked: &hijacked,
                });
            }
        }
        if !site.exit_probes.is_empty() {
            let watched = site.exit_probes.clone();
            self.enter_watched(tid, &regs, r.fs_base, key, &watched);
        }
        if has_return {
            let site = &self.sites[&key];
            let ids: Vec<ProbeId> = site.probes.iter().filter(|id| !site.exit_probes.contains(id)).copied().collect();
            self.hijack_return(tid, &regs, r.fs_base, key, &ids)?;
        }
        if !own_exit.is_empty() {
            self.leave_watched(tid, &mut regs, &own_exit);
        }
        sys::from_regs(&regs, r);
        Ok(())
    }

    /// The bytes at `addr` now (to check that probes are gone).
    pub fn read_code(&mut self, addr: Addr, len: usize) -> Result<Vec<u8>, TraceError> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }
}

/// Seize every thread of process `pid` listed and not yet in `threads` (nor `exiting`),
/// listing again until no new one appears (threads may be created meanwhile); each one
/// seized goes into `threads`, running.
fn seize_listed(pid: i32, threads: &mut BTreeMap<i32, Thread>, exiting: &mut BTreeSet<i32>) -> Result<(), TraceError> {
    let attach_err = |reason: String| TraceError::Attach { pid, reason };
    let options = (libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEEXIT) as u64;
    loop {
        let listed = crate::proc_ids::thread_ids(pid).map_err(|e| attach_err(e.to_string()))?;
        let mut new: Vec<i32> =
            listed.into_iter().filter(|t| !threads.contains_key(t) && !exiting.contains(t)).collect();
        // The main thread first: whether the kernel lets us trace the process is its answer.
        new.sort_by_key(|t| (*t != pid, *t));
        if new.is_empty() {
            return Ok(());
        }
        if threads.is_empty() {
            crate::blocked::wait_out_vforks(pid, &new, crate::stop::BLOCKED_BOUND).map_err(attach_err)?;
        }
        for tid in new {
            match sys::seize(tid, options) {
                Ok(()) => {}
                // Another thread refused once the main thread was seized is exiting.
                Err(e) if e.gone() || (e.errno == libc::EPERM && tid != pid && threads.contains_key(&pid)) => {
                    exiting.insert(tid);
                    continue;
                }
                Err(e) if e.errno == libc::EPERM => return Err(attach_err(refusal_reason(pid))),
                Err(e) => return Err(attach_err(e.to_string())),
            }
            threads.insert(tid, Thread::running());
        }
    }
}

/// How many threads of process `pid` run on where its first thread alone has ended
/// (`pthread_exit`: the process reads as a zombie until they end too).
pub(crate) fn others_after_first_thread_ended(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains("zombie"));
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse::<u32>().ok());
    threads.filter(|&n| zombie && n > 1).map(|n| n - 1)
}

/// Why the kernel refused to let us trace `pid`, in words.
pub(crate) fn refusal_reason(pid: i32) -> String {
    if let Some(t) = tracer_of(pid).filter(|t| *t != 0) {
        return format!("it is already traced by process {t}");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
        if let Some(others) = others_after_first_thread_ended(pid) {
            return format!(
                "its first thread has ended (pthread_exit) while {others} other thread{} run{} on, and dprobe \
                 cannot attach to a process whose first thread is gone",
                if others == 1 { "" } else { "s" },
                if others == 1 { "s" } else { "" }
            );
        }
        return "it has exited (a zombie: its parent has not collected its status yet): nothing is left to trace"
            .into();
    }
    if is_kernel_thread(pid) {
        return "it is a kernel thread (kernel functions are probed with the kernel engine: --system-wide)".into();
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.is_empty() {
        // No memory for a moment: a thread other than the first executing a program leaves the
        // first a zombie without memory until the new program's is there.
        return "it has no memory at this moment (it is executing another program, or ending): try again".into();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return "the kernel refused even to root (the init process, or a security policy: \
                kernel.yama.ptrace_scope = 3 or a security module)"
            .into();
    }
    "permission denied (another user's process, or kernel.yama.ptrace_scope forbids it: run as root or set \
     it to 0)"
        .into()
}

/// The process tracing `pid` (0: none), from `/proc/PID/status`.
fn tracer_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

/// The program's entry point, from its auxiliary vector (`AT_ENTRY`).
pub(crate) fn auxv_entry(pid: i32) -> Result<Addr, TraceError> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv"))?;
    crate::loader::auxv_value(&auxv, libc::AT_ENTRY).map(Addr).ok_or(TraceError::NoEntry)
}

/// Whether process `pid` is a kernel thread (`PF_KTHREAD` in the flags of its `stat`): one
/// with an empty command line may also be a process between two programs.
fn is_kernel_thread(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_KTHREAD != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel thread is told by its flags, not by its empty command line (a process between
    /// two programs has one too).
    #[test]
    fn kernel_threads_are_told_by_their_flags() {
        // (Process 2 is `kthreadd` outside a process namespace of its own.)
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(is_kernel_thread(2), "kthreadd");
        }
        assert!(!is_kernel_thread(std::process::id() as i32));
        assert!(!is_kernel_thread(i32::MAX), "no such process");
    }
}
