//! The ptrace engine behind the [`Engine`] seam: each probe's handler evaluates its fetch plan
//! on the stopped thread and queues the event; [`Engine::run`] hands the queue to the sink
//! after every stop, so events keep their order and the queue never holds more than one
//! stop's worth (a stop that collects stub returns brings several).

use dprobe_arch::{Addr, Memory, MemoryFault};
use dprobe_core::fetch::{errno_tls_offset, FetchContext, FetchPlan, Values};
use dprobe_core::{
    Ending, Engine, EventSink, Exit, Placed, Placement, ProbeError, ProbeEvent, ProbeId, ProbeRequest, Side,
    StackRequest, Stats, ThreadNames, WaitForProgram,
};
use dprobe_spec::{ArgType, Fetch, NamedArg, ProbeKind, ProbePoint};
use dprobe_stack::Unwinder;
use dprobe_sym::ResolveError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::error::{Stopped, TraceError};
use crate::probes::{Hit, HitKind, ProbeDef};
use crate::program_view::ProgramView;
use crate::tick::Tick;
use crate::tracee::Tracee;

/// `CLOCK_MONOTONIC` in nanoseconds.
fn monotonic_ns() -> u64 {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// An event waiting for the sink.
struct Queued {
    probe: usize,
    side: Side,
    pid: u32,
    tid: u32,
    time_ns: u64,
    entry_time_ns: Option<u64>,
    values: Values,
    user_stack: Vec<u64>,
    /// The thread's name at the hit: an `exec` may rename it before the event is handed over.
    comm: ThreadName,
}

/// A thread's name, kept without allocating (the kernel's are at most 15 bytes; a longer
/// one is cut).
#[derive(Clone, Copy)]
struct ThreadName {
    bytes: [u8; 16],
    len: u8,
}

impl ThreadName {
    fn new(name: &[u8]) -> ThreadName {
        let mut bytes = [0; 16];
        let len = name.len().min(bytes.len());
        bytes[..len].copy_from_slice(&name[..len]);
        ThreadName { bytes, len: len as u8 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What the handlers and the run loop share.
struct Shared {
    queue: VecDeque<Queued>,
    /// Value storage to reuse, per probe (each plan has its own size).
    spare: Vec<Vec<Values>>,
    names: ThreadNames,
    /// The stacks events carry, if asked for, and what unwinds them.
    stacks: Option<StackRequest>,
    unwinder: Unwinder,
}

/// One program traced through ptrace, spawned or attached.
pub struct PtraceEngine {
    tracee: Tracee,
    /// The children followed ([`PtraceEngine::follow`]), each a process of its own.
    children: Vec<Tracee>,
    /// The figures of followed children that ended, per probe.
    ended: Vec<Stats>,
    spawned: bool,
    shared: Rc<RefCell<Shared>>,
    ids: Vec<ProbeId>,
    /// The offset of `errno` from the thread pointer, once looked for.
    errno_offset: Option<Option<u64>>,
}

impl PtraceEngine {
    /// Start `program` with `args`, stopped once its libraries are loaded, before any
    /// constructor runs.
    pub fn spawn(program: &str, args: &[&str]) -> Result<PtraceEngine, TraceError> {
        PtraceEngine::spawn_as(program, program, args)
    }

    /// [`PtraceEngine::spawn`], the program told that it was started as `argv0` (its
    /// `argv[0]`): a command found on `PATH` is told the name it was given.
    pub fn spawn_as(program: &str, argv0: &str, args: &[&str]) -> Result<PtraceEngine, TraceError> {
        let mut tracee = Tracee::spawn_as(program, argv0, args)?;
        tracee.run_to_start()?;
        Ok(PtraceEngine::new(tracee, true))
    }

    /// Trace the running process `pid` (every thread).
    pub fn attach(pid: i32) -> Result<PtraceEngine, TraceError> {
        Ok(PtraceEngine::new(Tracee::attach(pid)?, false))
    }

    fn new(mut tracee: Tracee, spawned: bool) -> PtraceEngine {
        let shared = Shared {
            queue: VecDeque::new(),
            spare: Vec::new(),
            names: ThreadNames::default(),
            stacks: None,
            unwinder: Unwinder::new(),
        };
        let shared = Rc::new(RefCell::new(shared));
        // A name kept from before a thread's `exec` would stay on the new program's events
        // (followed children are told through their copies of this).
        let names = shared.clone();
        tracee.renamed = Some(Rc::new(move |tid| names.borrow_mut().names.forget(tid as u32)));
        PtraceEngine {
            tracee,
            children: Vec::new(),
            ended: Vec::new(),
            spawned,
            shared,
            ids: Vec::new(),
            errno_offset: None,
        }
    }

    /// The traced process.
    pub fn pid(&self) -> i32 {
        self.tracee.pid()
    }

    /// Follow the program's children: a forked child is traced with its copy of the probes,
    /// a program a child executes is probed as the program itself is; events carry each
    /// process's id and the figures count them all. Without it, children run untraced (a
    /// `vfork` child, which shares the program's memory and probes, until it executes).
    pub fn follow(&mut self) {
        self.tracee.follow = true;
    }

    /// The traced process thread `tid` belongs to: 0 the program, `i + 1` child `i`.
    fn owner_of(&self, tid: i32) -> usize {
        let all = || std::iter::once(&self.tracee).chain(&self.children).enumerate();
        all().find(|(_, t)| t.claims(tid)).or_else(|| all().find(|(_, t)| t.may_claim(tid))).map_or(0, |(i, _)| i)
    }

    /// One wait status, handled by the process it belongs to; `Some` when the program ended.
    fn handle(&mut self, tid: i32, status: i32) -> Result<Option<dprobe_core::Exit>, TraceError> {
        let owner = self.owner_of(tid);
        let t = if owner == 0 { &mut self.tracee } else { &mut self.children[owner - 1] };
        let ended = t.handle(tid, status)?;
        let new = std::mem::take(&mut t.followed);
        for mut child in new {
            child.resume_stopped()?;
            self.children.push(child);
        }
        match ended {
            Some(exit) if owner == 0 => return Ok(Some(exit)),
            Some(_) => {
                let child = self.children.remove(owner - 1);
                for (index, id) in self.ids.iter().enumerate() {
                    add_stats(&mut self.ended[index], &child.stats(*id));
                }
            }
            None => {}
        }
        Ok(None)
    }

    /// Run every traced process until the program ends or `stop` says so (asked after every
    /// stop that queued no event, and when a signal interrupts the wait).
    fn run_all(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, TraceError> {
        self.tracee.resume_stopped()?;
        for child in &mut self.children {
            child.resume_stopped()?;
        }
        loop {
            self.deliver(sink);
            // As a single process's run does (`Tracee::run_until`): a breakpoint another
            // tool's uprobe took away is put back.
            self.tracee.check_breakpoints_now_and_then();
            for child in &mut self.children {
                child.check_breakpoints_now_and_then();
            }
            if stop() {
                return Ok(Ending::Asked);
            }
            match crate::sys::wait_interruptible(-1)? {
                Some((tid, status)) => {
                    if let Some(exit) = self.handle(tid, status)? {
                        self.deliver(sink);
                        return Ok(Ending::Exited(exit));
                    }
                }
                None => {
                    self.tracee.collect_returns();
                    for child in &mut self.children {
                        child.collect_returns();
                    }
                }
            }
        }
    }

    /// The offset of `errno` from the thread pointer, through libc's `__errno_location`.
    fn errno_offset(&mut self) -> Result<u64, String> {
        let at = self.tracee.resolve("libc:__errno_location").map_err(|e| e.to_string())?;
        errno_tls_offset(&mut CodeReader(&mut self.tracee), at).map_err(|e| e.to_string())
    }

    fn handler(&self, index: usize, plan: &FetchPlan, errno_offset: Option<u64>) -> crate::Handler {
        let shared = self.shared.clone();
        let plan = plan.clone();
        Box::new(move |hit: &mut Hit<'_>| {
            let mut guard = shared.borrow_mut();
            let s = &mut *guard;
            // When the stop was seen: the clock every engine stamps events with.
            let now = monotonic_ns();
            let (side, entry_regs, entry_time_ns) = match hit.kind {
                HitKind::Entry => (Side::Entry, None, None),
                HitKind::Return { entry_regs, elapsed, .. } => {
                    (Side::Return, Some(entry_regs), Some(now.saturating_sub(elapsed.as_nanos() as u64)))
                }
            };
            let mut values = s.spare[index].pop().unwrap_or_else(|| plan.values());
            let comm = ThreadName::new(s.names.get(hit.pid as u32, hit.tid as u32));
            let cx = FetchContext {
                regs: hit.regs,
                entry_regs,
                comm: comm.as_bytes(),
                errno_addr: errno_offset.map(|o| hit.fs_base.wrapping_add(o)),
                file_base: hit.file_base,
            };
            let mut as_the_program_sees_it = ProgramView { pid: hit.pid, fallback: &mut *hit.memory };
            plan.evaluate(&cx, &mut as_the_program_sees_it, &mut values);
            let mut user_stack = Vec::new();
            if let Some(want) = s.stacks.filter(|w| w.user) {
                let pid = hit.pid as u32;
                user_stack =
                    crate::backtrace::stack_of(&mut s.unwinder, pid, hit.regs, hit.memory, hit.hijacked, want.depth);
            }
            s.queue.push_back(Queued {
                probe: index,
                side,
                pid: hit.pid as u32,
                tid: hit.tid as u32,
                time_ns: now,
                entry_time_ns,
                values,
                user_stack,
                comm,
            });
        })
    }

    /// Hand every queued event to `sink`.
    fn deliver(&self, sink: EventSink<'_>) {
        loop {
            let Some(q) = self.shared.borrow_mut().queue.pop_front() else { return };
            {
                let event = ProbeEvent {
                    probe: q.probe,
                    side: q.side,
                    pid: q.pid,
                    tid: q.tid,
                    maps_of: q.pid,
                    time_ns: q.time_ns,
                    entry_time_ns: q.entry_time_ns,
                    comm: q.comm.as_bytes(),
                    values: &q.values,
                    user_stack: &q.user_stack,
                    kernel_stack: &[],
                };
                sink(&event);
            }
            self.shared.borrow_mut().spare[q.probe].push(q.values);
        }
    }

    fn kill_spawned(&self) {
        if self.spawned {
            let _ = kill(Pid::from_raw(self.tracee.pid()), Signal::SIGKILL);
        }
    }
}

/// The tracee's memory, for reading code before tracing starts.
struct CodeReader<'a>(&'a mut Tracee);

impl Memory for CodeReader<'_> {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let bytes =
            self.0.read_code(addr, buf.len()).map_err(|_| MemoryFault { addr, len: buf.len(), write: false })?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}

/// The ptrace engine places user-space targets only.
fn user_target(spec: &dprobe_spec::ProbeSpec) -> Result<&ProbePoint, TraceError> {
    match &spec.point {
        t @ ProbePoint::User { .. } => Ok(t),
        _ => Err(TraceError::Probe(ProbeError::InvalidAddress {
            addr: Addr(0),
            reason: "kernel functions and tracepoints need the kernel engine, not ptrace".into(),
        })),
    }
}

/// Whether a return probe's values can all be had without stopping the thread at the return
/// (see [`ProbeDef::no_return_stop`]): the return value, entry arguments in registers, the
/// thread's name, and registers a return stub records or the function keeps. Anything read
/// from memory at the return needs the stop.
fn returns_without_stop(args: &[NamedArg]) -> bool {
    args.iter().all(|a| match &a.fetch {
        Fetch::Comm => true,
        Fetch::RetVal | Fetch::Immediate(_) => a.ty != ArgType::String,
        Fetch::Arg(n) => *n <= 6 && a.ty != ArgType::String,
        Fetch::Reg(r) => {
            matches!(r.0, "ax" | "dx" | "bx" | "bp" | "sp" | "ip" | "r12" | "r13" | "r14" | "r15")
        }
        _ => false,
    })
}

impl Engine for PtraceEngine {
    type Error = TraceError;

    /// Place a probe; one on a library that is not loaded yet waits for it.
    fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, TraceError> {
        let target = user_target(probe.spec)?;
        let mut placed = Placed::default();
        let needs_errno = probe.plan.args().iter().any(|a| a.fetch == Fetch::Errno);
        if needs_errno && self.errno_offset.is_none() {
            let found = self.errno_offset();
            if let Err(e) = &found {
                placed.note = Some(format!("$errno cannot be fetched: {e}"));
            }
            self.errno_offset = Some(found.ok());
        }
        let index = self.ids.len();
        let errno_offset = self.errno_offset.flatten();
        let make = |engine: &PtraceEngine| {
            let handler = engine.handler(index, probe.plan, errno_offset);
            // A timed entry is seen at its return, paired by the engine's own return watch.
            let def = if probe.spec.kind == ProbeKind::Return || probe.timed {
                ProbeDef::on_return(target.clone(), handler)
            } else {
                ProbeDef::entry(target.clone(), handler)
            };
            let def = def.maxactive(probe.maxactive.unwrap_or(0));
            let def = match probe.semaphore {
                Some(semaphore) => def.semaphore(semaphore.clone()),
                None => def,
            };
            // A stack is read from the stopped thread.
            if returns_without_stop(probe.plan.args()) && engine.shared.borrow().stacks.is_none() {
                def.no_return_stop()
            } else {
                def
            }
        };
        let added = match self.tracee.add(make(self)) {
            Err(TraceError::Probe(ProbeError::Target(ResolveError::ObjectNotLoaded { object }))) => {
                placed.note =
                    Some(format!("`{object}` is not loaded yet; the probe will be placed when the program loads it"));
                self.tracee.add(make(self).when_loaded())
            }
            other => other,
        };
        let id = added?;
        // -v says how its returns are watched (a timed entry's too).
        placed.detail = self.tracee.return_mode(id).map(|mode| mode.to_string());
        if let Some(why) = self.tracee.semaphore_not_raised(id) {
            placed.note = Some(format!("its semaphore is not set, the program may skip the probe: {why}"));
        }
        self.ids.push(id);
        self.ended.push(Stats::default());
        self.shared.borrow_mut().spare.push(Vec::new());
        Ok(placed)
    }

    fn stacks(&mut self, want: StackRequest) -> Result<(), String> {
        if want.kernel {
            return Err("kernel stacks need the kernel engine (--engine kernel)".into());
        }
        self.shared.borrow_mut().stacks = Some(want);
        Ok(())
    }

    fn run(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, TraceError> {
        let _tick = Tick::start().map_err(|e| TraceError::Os(e.into()))?;
        if self.tracee.follow {
            return self.run_all(stop, sink);
        }
        loop {
            let shared = self.shared.clone();
            let mut asked = false;
            let outcome = self.tracee.run_until(&mut || {
                // Return after every stop that queued events, to deliver them in order.
                if !shared.borrow().queue.is_empty() {
                    return true;
                }
                asked = stop();
                asked
            });
            self.deliver(sink);
            match outcome? {
                Stopped::Exited(exit) => return Ok(Ending::Exited(exit)),
                Stopped::Asked if asked => return Ok(Ending::Asked),
                Stopped::Asked => {}
            }
        }
    }

    fn stats(&self, index: usize) -> Stats {
        let Some(id) = self.ids.get(index) else { return Stats::default() };
        let mut stats = self.tracee.stats(*id);
        for child in &self.children {
            add_stats(&mut stats, &child.stats(*id));
        }
        if let Some(ended) = self.ended.get(index) {
            add_stats(&mut stats, ended);
        }
        stats
    }

    fn notes(&self) -> Vec<String> {
        let untraced: u64 = std::iter::once(&self.tracee).chain(&self.children).map(|t| t.untraced_children).sum();
        dprobe_core::untraced_children(untraced, "without --no-follow they are traced").into_iter().collect()
    }

    fn remarks(&self, index: usize) -> Vec<String> {
        let Some(id) = self.ids.get(index) else { return Vec::new() };
        match self.tracee.return_mode(*id) {
            Some(mode @ crate::ReturnMode::ReturnAddress { .. }) => vec![mode.to_string()],
            _ => Vec::new(),
        }
    }

    /// Let the program go: the calling thread must be about to end (dprobe's tracing thread,
    /// once the program is let go), which ends the tracing of threads put back into their
    /// system calls (see [`Tracee::let_go_as_thread_ends`]). A program dprobe started and let
    /// go because a signal stopped the trace is waited for as `wait` says (see
    /// [`WaitForProgram`]). One let go at the end of a duration keeps running on its own.
    fn finish(self, wait: Option<WaitForProgram>, give_up: &dyn Fn() -> bool) -> Result<Option<Exit>, TraceError> {
        let pid = Pid::from_raw(self.tracee.pid());
        let spawned = self.spawned;
        // The tick interrupts the waits of detaching too, so that a second signal ends them.
        let _tick = Tick::start().map_err(|e| TraceError::Os(e.into()))?;
        // The calling thread ends next: threads in a system call are let go
        // without being woken (see `Tracee::let_go_as_thread_ends`).
        for child in self.children {
            // Followed children are let go as the program is; one that fails does not keep
            // the others (or the program) traced.
            let _ = child.let_go_as_thread_ends(give_up);
        }
        let detached = self.tracee.let_go_as_thread_ends(give_up);
        crate::family::let_unclaimed_children_go();
        if let Some(exit) = detached? {
            return Ok(Some(exit));
        }
        let Some(wait) = wait.filter(|_| spawned) else { return Ok(None) };
        Ok(crate::command_end::wait_for_command(pid.as_raw(), wait, give_up))
    }

    /// A program dprobe started, which has not run a line of its own yet, goes with the error.
    fn abandon(mut self) {
        self.tracee.lower_semaphores();
        self.kill_spawned();
    }
}

/// Add the counts of `more` to `stats` (the same probe in another process).
fn add_stats(stats: &mut Stats, more: &Stats) {
    stats.hits += more.hits;
    stats.returns += more.returns;
    stats.missed += more.missed;
    stats.abandoned += more.abandoned;
    // A probe waiting in the program was placed in a child (the program it executed).
    if stats.placement == Placement::Waiting && matches!(more.placement, Placement::At(_) | Placement::Unloaded) {
        stats.placement = more.placement.clone();
    }
}
