//! The agent engine, the tracer's side: the agent library is loaded into the program (a
//! started one held by ptrace right after its C library's initialisation, before any other
//! constructor; a running process's thread held at a safe point), the probes are sent to it,
//! and ptrace lets go before the program runs on (the program is watched again for its
//! `exec` alone, from the moment it is about to: `exec_gate.rs`; the new program gets the
//! agent and the probes again). From then on the program is not stopped at any hit: events
//! come through the shared ring, figures from the shared counters.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dprobe_core::fetch::Values;
use dprobe_core::returns::ReturnMode;
use dprobe_core::{
    Addr, Ending, Engine, EventSink, Exit, Placed, Placement, ProbeEvent, ProbeRequest, Stats, ThreadNames,
    WaitForProgram,
};
use dprobe_ptrace::{ExecWatch, Injector, LoadError, SharedImage, Watched};
use dprobe_spec::{ArgType, ProbeKind, ProbePoint};
use dprobe_stack::{Unwinder, UserRegs};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::record::decode;
use crate::shm::{Counter, Shm, MAX_PROBES, SLOTS};
use crate::wire::{self, Message, PlaceProbe};

mod connecting;
mod descendants;
mod exec_following;
mod images;
mod ns_ids;

pub use connecting::listener_for_agent_in;
use connecting::{connect, listen, load, start_attached};

/// The agent engine's errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The library could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The agent library was not found.
    #[error("dprobe's agent library is not installed next to dprobe ({0}); use --engine ptrace")]
    NoLibrary(String),
    /// Talking to the agent failed.
    #[error("the agent in process {pid}: {error}")]
    Agent {
        /// The process.
        pid: i32,
        /// What failed (in the message, not its source: a chain of sources would say it twice).
        error: io::Error,
    },
    /// The agent left the process while dprobe placed its probes, for what the program did.
    #[error("process {pid} {why}: the agent left it before its probes were in place (--engine ptrace may trace it)")]
    Left {
        /// The process.
        pid: i32,
        /// What the program did, in words (`agent_left_because`).
        why: &'static str,
    },
    /// The process ended while the agent started in it.
    #[error("process {0} ended while dprobe was talking to the agent in it")]
    EndedFirst(i32),
    /// The process executed another program while the agent started in it (the agent went
    /// with the old program's memory).
    #[error("process {0} executed another program while dprobe was talking to the agent in it: try again")]
    ExecutedFirst(i32),
    /// The process executed another program while dprobe attached to it (before any agent).
    #[error("process {0} executed another program (or ended) while dprobe was attaching to it: try again")]
    ExecutedAttaching(i32),
    /// The caller gave up waiting for the agent to start (a stop signal).
    #[error("stopped before the agent started")]
    GaveUp,
    /// The agent refused a probe.
    #[error("{0}")]
    Refused(String),
    /// Only user-space functions.
    #[error("kernel functions and tracepoints need the kernel engine, not the agent")]
    NotUser,
    /// The process replaced its program (`exec`); the new one has no agent.
    #[error("{0}")]
    NotTraced(String),
    /// More probes than the shared memory has counters for.
    #[error("the agent engine places at most {MAX_PROBES} probes")]
    TooMany,
}

/// How long the agent has to connect and to answer (placing many probes on a loaded machine
/// takes seconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most probes asked in one message (`Message::PlaceMany`): a few hundred kilobytes with
/// their arguments, under the protocol's limit of a megabyte, and placed in well under a second.
const PLACED_TOGETHER: usize = 512;

#[derive(Clone)]
struct ProbeInfo {
    names: Vec<String>,
    types: Vec<ArgType>,
    placement: Placement,
    /// Said in the summary: why its returns are watched through the return address.
    remark: Option<String>,
}

/// Where dprobe is in letting the program go after its `exec` failed.
#[derive(Default)]
struct LettingGo {
    /// Since when the agent says it may (`exec_gate::UNWATCH`).
    since: Option<Instant>,
    /// The looks that found the watched thread inside a system call, in a row.
    tries: u32,
}

/// One program traced through the agent, spawned or attached.
pub struct AgentEngine {
    pid: i32,
    /// Why the connection with the agent ended, once looked for (see `agent_err`).
    connection_lost: std::cell::Cell<Option<ConnectionLost>>,
    /// The choices of indirect functions in dprobe's own process, handed to the agent with
    /// their probes (`dprobe_sym::IfuncChoice`).
    own_ifunc_choices: std::cell::RefCell<dprobe_sym::OwnIfuncChoices>,
    /// What the agent said as it removed the probes (`kept_jumps.rs`).
    finish_notes: dprobe_core::FinishNotes,
    spawned: bool,
    /// Where the thread that loaded the agent into a running process was held.
    loaded_by: Option<String>,
    /// Held until the trace runs (the program waits for its probes).
    injector: Option<Injector>,
    sock: UnixStream,
    /// When the connection was first seen ended with the agent still in the process (see
    /// [`AgentEngine::connection_end`]).
    ended_with_agent_there: Option<Instant>,
    shm: Shm,
    /// The shared memory of the agents of programs the process ran before (`exec`): their
    /// figures count in the summary.
    retired: Vec<Shm>,
    /// The program, watched for its `exec` (from the moment it asks; a started one all along
    /// where it cannot ask).
    watch: Option<ExecWatch>,
    /// Whether the agent asks before the program's `exec` (`exec_gate.rs`): the program is
    /// then watched only from that moment.
    exec_gated: bool,
    /// Why the program could not be watched when it asked before its `exec`.
    unwatched: Option<String>,
    /// Letting the program go after its `exec` failed (`exec_gate.rs`).
    release: LettingGo,
    /// How the program ended, when the watch saw it.
    status: Option<i32>,
    /// A new program the process executed, held for the agent (seen while looking at the
    /// old agent's end).
    pending: Option<Injector>,
    /// What is loaded again into a program the process executes.
    library: OwnedLibrary,
    /// What was asked of the agent, asked again of the next one: children followed, the
    /// probes, the filters.
    follow_children: bool,
    requests: Vec<PlaceProbe>,
    filters: Vec<Message>,
    /// Probes the agent could not place in a program the process executed, and why.
    exec_notes: Vec<String>,
    probes: Vec<ProbeInfo>,
    events: bool,
    names: ThreadNames,
    stopped: bool,
    values: Vec<Values>,
    /// Why the process is not traced any more, when it ran `exec`.
    lost: Option<String>,
    /// Where forked children's agents announce themselves (one per program loaded).
    listeners: Vec<UnixListener>,
    /// The forked children's agents.
    children: Vec<UnixStream>,
    /// Children about to `exec` (forked, or sharing the program's memory), each watched for it
    /// from when it asked (`exec_gate.rs`), with children followed.
    child_watches: Vec<ExecWatch>,
    /// The programs children executed, each traced by an agent of its own, with the same
    /// probes (and each following its own children); kept once ended, for their figures.
    descendants: Vec<AgentEngine>,
    /// This traces a program a child of another traced program executed (one of its
    /// `descendants`): watched for its own `exec` as a started program is, not reaped here.
    descendant: bool,
    /// A descendant that ended, or whose program is not traced any more.
    done: bool,
    /// Children whose `exec` could not be followed, and why (said in the summary).
    unfollowed: Vec<String>,
    /// With stacks asked for: how deep, what unwinds them, the last event's stack.
    stacks: Option<usize>,
    /// The ids of the agent's records in dprobe's numbering (`ns_ids.rs`).
    outside_ids: ns_ids::OutsideIds,
    /// The trace is over (`run` returned): a call not returned by then never returns to it.
    over: bool,
    /// The agent left the program, which entered a new user namespace: the program is
    /// watched for its `exec` instead (`user_namespace.rs`).
    agent_left: bool,
    unwinder: Unwinder,
    user_stack: Vec<u64>,
}

/// The agent library to load.
#[derive(Debug, Clone, Copy)]
pub enum Library<'a> {
    /// Its bytes (embedded in `dprobe`): written into a memory file of the traced process.
    Image(&'a [u8]),
    /// A file the traced process can open.
    File(&'a std::path::Path),
}

/// [`Library`], kept to load the agent again into a program the process executes.
#[derive(Clone)]
enum OwnedLibrary {
    /// Its bytes, and the sealed memory file every program of the trace loads it from.
    Image(Arc<SharedImage>),
    File(PathBuf),
}

impl OwnedLibrary {
    fn of(library: Library<'_>) -> OwnedLibrary {
        match library {
            Library::Image(image) => OwnedLibrary::Image(Arc::new(SharedImage::new(image.to_vec(), MEMORY_FILE))),
            Library::File(path) => OwnedLibrary::File(path.to_path_buf()),
        }
    }
}

/// The name of the memory file that holds the agent in a traced process.
const MEMORY_FILE: &str = "dprobe-agent";

/// Where a built agent library is: next to the running executable, or in its `deps/`
/// directory as Cargo lays out a build (the newest wins).
pub fn agent_library() -> Result<PathBuf, AgentError> {
    const NAME: &str = "libdprobe_agent.so";
    let exe = std::env::current_exe().map_err(|e| AgentError::NoLibrary(e.to_string()))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [dir.join(NAME), dir.join("deps").join(NAME), dir.join("../lib").join(NAME)];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok().filter(|m| m.is_file())?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| AgentError::NoLibrary(format!("looked for {}", candidates[0].display())))
}

/// Why the connection with an agent ended.
#[derive(Debug, Clone, Copy)]
enum ConnectionLost {
    /// The process ended.
    Ended,
    /// It executed another program.
    Executed,
    /// Not known: the process still has its agent.
    Unknown,
}

impl AgentEngine {
    /// Start `program` with `args` and load the agent before its libraries' constructors run.
    /// `events`: the probes' events are wanted (not for counts alone).
    pub fn spawn(program: &str, args: &[&str], library: Library<'_>, events: bool) -> Result<AgentEngine, AgentError> {
        AgentEngine::spawn_as(program, program, args, library, events)
    }

    /// [`AgentEngine::spawn`], the program told that it was started as `argv0` (its
    /// `argv[0]`): a command found on `PATH` is told the name it was given.
    pub fn spawn_as(
        program: &str,
        argv0: &str,
        args: &[&str],
        library: Library<'_>,
        events: bool,
    ) -> Result<AgentEngine, AgentError> {
        AgentEngine::start(Injector::spawn_as(program, argv0, args)?, library, events)
    }

    /// Load the agent into running process `pid`. The process runs on untraced once the
    /// agent is loaded (or could not be): held, it would die with dprobe if dprobe died while
    /// placing (a thread left stopped at an injected call); the agent places the probes while
    /// it runs.
    pub fn attach(pid: i32, library: Library<'_>, events: bool) -> Result<AgentEngine, AgentError> {
        AgentEngine::attach_giving_up(pid, library, events, &|| false)
    }

    /// [`AgentEngine::attach`], whose wait for the agent's start ends with
    /// [`AgentError::GaveUp`] once `give_up` says so (asked every few milliseconds) and a grace
    /// period has passed: an agent that connects within it is returned (the caller, asked to
    /// stop, stops it at once); one that does not finds no one to connect to later and ends
    /// its session by itself, removing what it placed.
    pub fn attach_giving_up(
        pid: i32,
        library: Library<'_>,
        events: bool,
        give_up: &dyn Fn() -> bool,
    ) -> Result<AgentEngine, AgentError> {
        let library = OwnedLibrary::of(library);
        let (listener, name) = listen(pid)?;
        let (started, held_where) = start_attached(pid, &library, &name, give_up)?;
        let (listener, sock, shm) = connect(pid, listener, started, give_up)?;
        let mut engine = AgentEngine::new(pid, None, listener, sock, shm, library, events);
        engine.loaded_by = Some(held_where);
        Ok(engine)
    }

    /// A started program, held where it waits for its probes.
    fn start(mut injector: Injector, library: Library<'_>, events: bool) -> Result<Self, AgentError> {
        let pid = injector.pid();
        let library = OwnedLibrary::of(library);
        let (listener, sock, shm) = load(&mut injector, &library, &|| false)?;
        Ok(AgentEngine::new(pid, Some(injector), listener, sock, shm, library, events))
    }

    fn new(
        pid: i32,
        injector: Option<Injector>,
        listener: UnixListener,
        sock: UnixStream,
        shm: Shm,
        library: OwnedLibrary,
        events: bool,
    ) -> AgentEngine {
        let spawned = injector.is_some();
        AgentEngine {
            pid,
            connection_lost: std::cell::Cell::new(None),
            own_ifunc_choices: Default::default(),
            finish_notes: Default::default(),
            spawned,
            injector,
            sock,
            loaded_by: None,
            ended_with_agent_there: None,
            shm,
            retired: Vec::new(),
            watch: None,
            exec_gated: false,
            unwatched: None,
            release: LettingGo::default(),
            status: None,
            pending: None,
            library,
            follow_children: false,
            requests: Vec::new(),
            filters: Vec::new(),
            exec_notes: Vec::new(),
            probes: Vec::new(),
            events,
            names: ThreadNames::default(),
            stopped: false,
            values: Vec::new(),
            lost: None,
            listeners: vec![listener],
            children: Vec::new(),
            child_watches: Vec::new(),
            descendants: Vec::new(),
            descendant: false,
            done: false,
            unfollowed: Vec::new(),
            stacks: None,
            unwinder: Unwinder::new(),
            agent_left: false,
            over: false,
            outside_ids: ns_ids::OutsideIds::new(pid),
            user_stack: Vec::new(),
        }
    }

    /// The traced process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where the thread of a running process that loaded the agent was held (its id and name,
    /// and the system call it waited in); `None` for a program dprobe started.
    pub fn loaded_by(&self) -> Option<&str> {
        self.loaded_by.as_deref()
    }

    /// How many of the object files it maps the program's agent took over from dprobe, rather
    /// than reading them itself (known once it answered a first request).
    pub fn objects_taken_over(&self) -> u32 {
        self.shm.objects_taken_over()
    }

    /// Follow forked children: each keeps the probes, its events carry its pid (without this,
    /// a child's probes are removed as it starts). Before the probes are placed.
    pub fn follow(&mut self) -> Result<(), AgentError> {
        self.follow_children = true;
        self.tell(&Message::Children(true)).map_err(|e| self.agent_err(e))
    }

    /// The agent's next message. A program watched for its `exec` has its signals
    /// delivered meanwhile: the agent's own safepoint signals every thread of the program, and
    /// under ptrace that signal stops the thread until the tracer delivers it, so waiting on
    /// the socket alone would wait out the safepoint's patience at every probe placed.
    ///
    /// While it waits, a thread the agent leaves the program for (`user_namespace.rs`) is
    /// taken at once: the agent waits for dprobe to take it before it goes, and the program's
    /// call waits for the agent (a second, where dprobe waited here for an answer instead).
    fn receive(&mut self) -> io::Result<Option<Message>> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let stopped = self.watch.as_ref().and_then(|w| w.stopped_fd());
            let slice = Duration::from_millis(if self.watch.is_some() { 2 } else { 20 });
            if readable_within(&self.sock, stopped, slice)? {
                break;
            }
            if let Some(watch) = self.watch.as_mut() {
                watch.deliver_signals().map_err(io::Error::other)?;
            }
            self.watch_as_the_agent_leaves();
            if Instant::now() >= deadline {
                return Err(unanswered(io::ErrorKind::WouldBlock.into()));
            }
        }
        wire::receive(&mut self.sock)
    }

    /// Send `message` to the agent and ring its doorbell: its thread, which waits on that
    /// between its looks at the socket, reads it at once.
    fn tell(&mut self, message: &Message) -> io::Result<()> {
        wire::send(&mut self.sock, message)?;
        self.shm.ring();
        Ok(())
    }

    /// What a failed exchange with the agent says: that the process ended or executed another
    /// program meanwhile, where the connection ended because it did; the error otherwise. Why
    /// the connection ended is looked for once (it may take a second): a batch's every probe
    /// fails with it.
    fn agent_err(&self, error: io::Error) -> AgentError {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        let pid = self.pid;
        if !matches!(error.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof) {
            return AgentError::Agent { pid, error: unanswered(error) };
        }
        // The agent said it leaves first, for what the program did (`user_namespace.rs`): why
        // the connection ended is known, and not looked for (a second, where the program goes
        // on).
        if let Some(why) = self.shm.why_the_agent_left() {
            return AgentError::Left { pid, why: crate::user_namespace::agent_left_because(why) };
        }
        let why = self.connection_lost.get().unwrap_or_else(|| {
            let why = match connecting::why_it_failed(pid, io::Error::from(error.kind())) {
                Ok(AgentError::EndedFirst(_)) => ConnectionLost::Ended,
                Ok(AgentError::ExecutedFirst(_)) => ConnectionLost::Executed,
                _ => ConnectionLost::Unknown,
            };
            self.connection_lost.set(Some(why));
            why
        });
        match why {
            ConnectionLost::Ended => AgentError::EndedFirst(pid),
            ConnectionLost::Executed => AgentError::ExecutedFirst(pid),
            ConnectionLost::Unknown => AgentError::Agent { pid, error: unanswered(error) },
        }
    }

    /// Tell the agent every probe is placed: the ones it held off on `int3` while it placed
    /// the others are enabled (the agent's `held_off.rs`) before it answers.
    fn arm(&mut self) -> Result<(), AgentError> {
        self.tell(&Message::Arm).map_err(|e| self.agent_err(e))?;
        loop {
            match self.receive() {
                Ok(Some(Message::Armed)) => return Ok(()),
                // A semaphore the agent raised as every probe was placed, which it could not.
                Ok(Some(Message::Note(note))) => self.finish_notes.lock().unwrap_or_else(|e| e.into_inner()).push(note),
                Ok(Some(_)) => {}
                Ok(None) => return Err(self.agent_err(io::Error::new(io::ErrorKind::UnexpectedEof, "it went away"))),
                Err(e) => return Err(self.agent_err(e)),
            }
        }
    }

    /// Let the program run (it waited before its constructors, or one thread at a safe
    /// point), every probe enabled, watched for its `exec`.
    fn release(&mut self) -> Result<(), AgentError> {
        if !self.stopped {
            self.arm()?;
        }
        match self.injector.take() {
            Some(i) if (self.spawned || self.descendant) && !self.stopped => self.release_watching_exec(i),
            Some(i) => Ok(i.release()?),
            None => {
                // A process dprobe attached to (let go as the agent started): followed into
                // the programs it and its children execute, as a started program is.
                if !self.stopped && !self.spawned && !self.descendant {
                    self.exec_gated = self.gate_exec();
                }
                Ok(())
            }
        }
    }

    /// Hand the records in the ring to `sink`, at most a ring's worth: while the program
    /// writes as fast as they are read, the ring never empties, and the caller must still
    /// look at its stop request between batches.
    fn drain(&mut self, sink: EventSink<'_>) -> usize {
        let mut n = 0;
        while n < SLOTS {
            let (probes, values) = (&self.probes, &mut self.values);
            let mut got = None;
            let popped = self.shm.pop(|record| {
                let probe = u32::from_le_bytes(record.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0xff; 4]));
                if let Some(p) = probes.get(probe as usize) {
                    got = decode(record, &p.types, &mut values[probe as usize]);
                }
            });
            if !popped {
                return n;
            }
            n += 1;
            let Some(mut h) = got else { continue };
            // Ids as dprobe numbers processes, where the agent's differ (a pid namespace).
            (h.pid, h.tid) = self.outside_ids.of(self.pid, &self.shm, h.pid, h.tid);
            self.user_stack.clear();
            if let Some(slot) = h.stack {
                if let (Some(depth), Some(copy)) = (self.stacks, self.shm.stack(slot)) {
                    let [ip, sp, bp] = copy.regs;
                    let mut memory = |addr: u64| {
                        let at = usize::try_from(addr.checked_sub(sp)?).ok()?;
                        Some(u64::from_le_bytes(copy.bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
                    };
                    let regs = UserRegs { ip, sp, bp };
                    // A forked child's map is the program's (its records are in the program's
                    // ring until it executes another program, which gets its own).
                    let (pid, maps_of) = (h.pid, self.pid as u32);
                    self.unwinder.unwind_in(pid, maps_of, regs, &mut memory, depth, &mut self.user_stack);
                }
            }
            let comm = if h.comm[0] != 0 { h.comm() } else { self.names.get(h.pid, h.tid) };
            let event = ProbeEvent {
                probe: h.probe as usize,
                side: h.side,
                pid: h.pid,
                tid: h.tid,
                maps_of: self.pid as u32,
                time_ns: h.time_ns,
                entry_time_ns: h.entry_time_ns,
                comm,
                values: &self.values[h.probe as usize],
                user_stack: &self.user_stack,
                kernel_stack: &[],
            };
            sink(&event);
            // Freed once the sink has symbolized the stack: a program exiting waits for its
            // stacks to be freed, so that its maps are still there to read.
            if let Some(slot) = h.stack {
                self.shm.free_stack(slot);
            }
        }
        n
    }

    /// The program the process runs now, in words.
    fn program(&self) -> String {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .map_or_else(|_| "another program".into(), |p| format!("`{}`", p.display()))
    }

    /// What the agent is asked for `probe`, numbered as if the `before` probes asked with it
    /// in one message before it are placed (the agent numbers them as it places them).
    fn request_for(&self, probe: &ProbeRequest<'_>, before: usize) -> Result<PlaceProbe, AgentError> {
        let ProbePoint::User { binary, function, offset } = &probe.spec.point else { return Err(AgentError::NotUser) };
        let index = self.probes.len() + before;
        if index >= MAX_PROBES {
            return Err(AgentError::TooMany);
        }
        let target = match binary {
            Some(b) => format!("{}:{function}", object_for_the_agent(b)),
            None => function.clone(),
        };
        Ok(PlaceProbe {
            index: index as u32,
            target,
            offset: *offset,
            kind: probe.spec.kind,
            timed: probe.timed && probe.spec.kind == ProbeKind::Entry,
            maxactive: probe.maxactive.unwrap_or(0) as u64,
            events: self.events,
            stack: self.events && self.stacks.is_some(),
            args: probe.plan.args().to_vec(),
            semaphore: probe.semaphore.cloned(),
            ifunc_choice: match binary {
                Some(b) => self.own_ifunc_choices.borrow_mut().choice(b, function),
                None => None,
            },
        })
    }

    /// Read the agent's answer to `request` (for `probe`), and keep the probe if it is placed
    /// (or waits for its library), under the next index: the one the agent gave it.
    fn answered(&mut self, probe: &ProbeRequest<'_>, mut request: PlaceProbe) -> Result<Placed, AgentError> {
        let mut placed = Placed::default();
        let answer = loop {
            match self.receive() {
                Ok(Some(Message::Placed(p))) => break p,
                Ok(Some(Message::Note(note))) => placed.note = Some(note),
                Ok(Some(Message::Detail(detail))) => placed.detail = Some(detail),
                Ok(_) => return Err(self.agent_err(io::Error::new(io::ErrorKind::UnexpectedEof, "it went away"))),
                Err(e) => return Err(self.agent_err(e)),
            }
        };
        let mut remark = None;
        let placement = match answer {
            wire::Placement::At(a) => Placement::At(Addr(a)),
            wire::Placement::Returns(a, mode) => {
                placed.detail = Some(mode.to_string());
                if let ReturnMode::ReturnAddress { .. } = mode {
                    remark = Some(mode.to_string());
                }
                Placement::At(Addr(a))
            }
            wire::Placement::Waiting => {
                let object = match &probe.spec.point {
                    ProbePoint::User { binary, .. } => binary.clone().unwrap_or_default(),
                    _ => String::new(),
                };
                placed.note = Some(format!("`{object}` is not loaded yet: probed when the program loads it"));
                Placement::Waiting
            }
            wire::Placement::Failed(why) => return Err(AgentError::Refused(why)),
        };
        // Asked again of a program the process executes; a refused one is not (its index is
        // the next probe's).
        request.index = self.probes.len() as u32;
        self.requests.push(request);
        self.values.push(probe.plan.values());
        let args = probe.plan.args();
        let names = args.iter().map(|a| a.name.clone()).collect();
        self.probes.push(ProbeInfo { names, types: args.iter().map(|a| a.ty).collect(), placement, remark });
        Ok(placed)
    }

    /// One look at the program, and at the programs its children executed: requests before an
    /// `exec` answered, a new program given the agent, the connection's end, the program's.
    /// How the program ended, if it did (a descendant that ended is looked at on for its own
    /// descendants).
    /// (`give_up`: whether dprobe is asked to stop, for the waits of an agent's start.)
    fn step(&mut self, sink: EventSink<'_>, give_up: &dyn Fn() -> bool) -> Result<Option<Ending>, AgentError> {
        self.accept_children();
        self.answer_children_execs();
        self.look_at_child_watches(give_up);
        self.step_descendants(sink, give_up);
        if self.done {
            return Ok(None);
        }
        self.watch_as_the_agent_leaves();
        self.answer_exec();
        if let Some(held) = self.look_at_the_program() {
            self.executed(held, sink, give_up);
        }
        if let Some(held) = self.pending.take() {
            self.executed(held, sink, give_up);
        }
        let left = self.shm.why_the_agent_left();
        let lost = match (!self.stopped && !self.agent_left).then(|| self.connection_end()).flatten() {
            // The agent left the program (`user_namespace.rs`), whatever it did next.
            Some(_) if left.is_some() => Some(format!(
                "process {}: it {}: the agent left it; not traced from then on",
                self.pid,
                crate::user_namespace::agent_left_because(left.unwrap_or_default())
            )),
            Some(ConnectionEnd::Exec) if !self.exec_seen() => {
                // The new program has no agent: nothing of dprobe's is in it any more.
                let why = self.unwatched.take().map(|e| format!(" (it could not be watched: {e})")).unwrap_or_default();
                Some(format!(
                    "process {} ran {} (exec) without the agent seeing it coming (made with the system call itself, \
                     or while the agent was starting){why}: not followed; not traced from then on",
                    self.pid,
                    self.program()
                ))
            }
            // The agent saw its connection's descriptor closed and removed its probes, or its
            // thread ended.
            Some(ConnectionEnd::Closed) if self.ended().is_none() => Some(format!(
                "process {}: the agent's connection ended (the program closed it, as a program that \
                 closes the descriptors it did not open does, or the agent's thread ended); not traced \
                 from then on",
                self.pid
            )),
            _ => None,
        };
        if let Some(lost) = lost {
            self.stopped = true;
            self.drain(sink);
            self.lost = Some(lost);
            if !self.spawned && !self.descendant {
                return Err(AgentError::NotTraced(self.lost.clone().unwrap_or_default()));
            }
        }
        if let Some(ended) = self.ended() {
            // Every event the program made is in the ring already; its probes went with it.
            self.stopped = true;
            while self.drain(sink) > 0 {}
            return Ok(Some(ended));
        }
        Ok(None)
    }

    /// Wait `limit`, less if a program watched for its `exec` stops or ends
    /// meanwhile: each signal it receives stops it until the watch delivers it, so it is
    /// looked at as soon as it stops (events in the ring wait for the next look, as without).
    /// Unwatched, less if the tracer's bell rang since it read `bell`.
    fn wait_for_the_program(&self, limit: Duration, bell: u32) {
        match self.watch.as_ref().and_then(ExecWatch::stopped_fd) {
            Some(fd) => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
                let _ = poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout);
            }
            None => {
                // Cut short by a thread asking before its `exec`, in the program or in a child
                // of it, if it rang since `bell` was read (`exec_gate.rs`).
                let timeout = libc::timespec { tv_sec: limit.as_secs() as i64, tv_nsec: limit.subsec_nanos().into() };
                dprobe_inproc::raw_calls::futex_wait(self.shm.tracer_bell(), bell, &timeout, false);
            }
        }
    }

    /// Stop watching the program for its `exec`: it runs on untraced.
    fn end_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.end();
        }
    }

    /// Take the connections of forked children's agents that announced themselves.
    fn accept_children(&mut self) {
        for listener in &self.listeners {
            while let Ok((mut child, _)) = listener.accept() {
                let announced = child.set_nonblocking(false).is_ok()
                    && child.set_read_timeout(Some(ANSWER_TIMEOUT)).is_ok()
                    && matches!(wire::receive(&mut child), Ok(Some(Message::Hello(_))));
                if announced {
                    self.children.push(child);
                }
            }
        }
    }

    /// Tell the forked children's agents to remove their probes, and wait until they have (or
    /// are gone). A child waiting for dprobe's answer before its `exec` goes on first: its
    /// probes wait for it (a child whose parent ended asks while the trace ends).
    fn stop_children(&mut self) {
        crate::exec_gate::close_for_everyone(&self.shm);
        self.accept_children();
        for mut child in self.children.drain(..) {
            if wire::send(&mut child, &Message::Stop).is_ok() {
                while let Ok(Some(m)) = wire::receive(&mut child) {
                    if m == Message::Stopped {
                        break;
                    }
                }
            }
        }
    }

    /// Tell the agent to remove its probes and wait until it has.
    fn stop_agent(&mut self) -> Result<(), AgentError> {
        self.stop_descendants();
        self.stop_children();
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        // Gone (the process ended, or executed another program): its probes went with it.
        let gone = |e: &io::Error| matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe);
        match self.tell(&Message::Stop) {
            Err(e) if gone(&e) => return Ok(()),
            told => told.map_err(|e| self.agent_err(e))?,
        }
        loop {
            match self.receive() {
                Ok(Some(Message::Stopped)) => {
                    self.wait_for_the_close();
                    return Ok(());
                }
                Ok(None) => return Ok(()),
                Ok(Some(Message::Note(note))) => {
                    self.finish_notes.lock().unwrap_or_else(|e| e.into_inner()).push(note);
                }
                Ok(Some(_)) => {}
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(self.agent_err(e)),
            }
        }
    }

    /// Wait a little for the agent to close its end of the connection after its last answer:
    /// a process let go has no descriptor of the agent's left but its memory file, once
    /// dprobe says so. (A forked child's copy of the descriptor keeps the connection open:
    /// the wait is short.)
    fn wait_for_the_close(&mut self) {
        const AT_MOST: Duration = Duration::from_millis(200);
        if self.sock.set_read_timeout(Some(AT_MOST)).is_ok() {
            let started = std::time::Instant::now();
            while started.elapsed() < AT_MOST && matches!(wire::receive(&mut self.sock), Ok(Some(_))) {}
        }
    }

    /// How the agent's connection ended, if it did while the process has memory (a process
    /// that exits loses its memory before its connections): the process replaced its program
    /// (`exec`: its memory is without the agent), or it closed the connection (the agent is
    /// still in it: a program that closes every descriptor it did not open, where the agent's
    /// thread could not have a descriptor table of its own).
    ///
    /// An `exec` ends the agent's thread, and with it the connection (its table's), before the
    /// new program replaces the process's memory: the connection ended with the agent still
    /// there counts as closed only once it stays so a while ([`EXEC_TAKES_AT_MOST`]).
    fn connection_end(&mut self) -> Option<ConnectionEnd> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            return None;
        }
        let mut byte = 0u8;
        // SAFETY: peeks at most one byte into `byte`.
        let n = unsafe {
            libc::recv(self.sock.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        if n != 0 {
            return None;
        }
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        if maps.is_empty() {
            return None;
        }
        if !agent_mapped(&maps) {
            return Some(ConnectionEnd::Exec);
        }
        let since = *self.ended_with_agent_there.get_or_insert_with(Instant::now);
        (since.elapsed() >= EXEC_TAKES_AT_MOST).then_some(ConnectionEnd::Closed)
    }

    /// How the program ended, if it did: a started one with its status; a process dprobe did
    /// not start, without (only its parent learns how) unless its watch saw its end.
    fn ended(&mut self) -> Option<Ending> {
        // Its watch saw its end (a process dprobe attached to as well, watched for its `exec`).
        if let Some(status) = self.status {
            return Some(ending_of(status));
        }
        if (self.spawned || self.descendant) && self.watch.is_some() {
            // Its end comes through the watch (a wait here would take its stops too).
            return None;
        }
        if self.spawned {
            // Not reaped yet: see `Engine::run`.
            return dprobe_ptrace::ended_unreaped(self.pid).map(ending_of);
        }
        process_gone(self.pid).then_some(Ending::Gone)
    }
}

/// Whether the agent is in the memory process maps `maps` describe (its memory file, or its
/// library's file): not after an `exec`.
fn agent_mapped(maps: &str) -> bool {
    maps.contains(MEMORY_FILE) || maps.contains("libdprobe_agent")
}

/// Whether process `pid` has ended: gone, or a zombie (its parent has not asked how yet). Not
/// a main thread that is a zombie while another thread lives: one that ended alone
/// (`pthread_exit`), or one another thread's `exec` is ending (that thread then takes the
/// process's id).
fn process_gone(pid: i32) -> bool {
    let zombie = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
    };
    let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) || zombie() && threads() <= 1
}

/// How long an `exec` may take from the end of the process's other threads to its new
/// memory, for [`AgentEngine::connection_end`].
const EXEC_TAKES_AT_MOST: Duration = Duration::from_secs(1);

/// How the agent's connection ended while its process lives on.
enum ConnectionEnd {
    /// The process runs another program.
    Exec,
    /// The process closed the connection's descriptor.
    Closed,
}

/// A wait status as an ending.
fn ending_of(status: i32) -> Ending {
    if libc::WIFSIGNALED(status) {
        Ending::Exited(Exit::Signal(libc::WTERMSIG(status)))
    } else {
        Ending::Exited(Exit::Code(libc::WEXITSTATUS(status)))
    }
}

/// Whether `sock` has something to read (or is closed) within `limit`; less if `stopped`
/// (a watched program's stops) is readable first.
fn readable_within(sock: &UnixStream, stopped: Option<BorrowedFd<'_>>, limit: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [sock.as_fd(), stopped.unwrap_or(sock.as_fd())].map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    let polled = if stopped.is_some() { &mut fds[..] } else { &mut fds[..1] };
    let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
    match poll(polled, timeout) {
        Ok(_) => Ok(fds[0].any().unwrap_or(false)),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A read that timed out says so in words (the socket's timeout is reported as `EAGAIN`).
fn unanswered(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        return io::Error::new(io::ErrorKind::TimedOut, format!("it did not answer within {ANSWER_TIMEOUT:?}"));
    }
    e
}

impl Engine for AgentEngine {
    type Error = AgentError;

    fn finish_notes(&self) -> dprobe_core::FinishNotes {
        self.finish_notes.clone()
    }

    /// User stacks: each event's registers and a copy of its thread's stack, taken in the
    /// probed thread, unwound here as the kernel engine's copies are.
    fn stacks(&mut self, want: dprobe_core::StackRequest) -> Result<(), String> {
        if want.kernel {
            return Err("the agent engine captures user stacks only; kernel stacks need the kernel engine".into());
        }
        self.stacks = want.user.then_some(want.depth);
        Ok(())
    }

    fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, AgentError> {
        let request = self.request_for(&probe, 0)?;
        self.tell(&Message::Place(request.clone())).map_err(|e| self.agent_err(e))?;
        self.answered(&probe, request)
    }

    fn place_many(&mut self, probes: Vec<ProbeRequest<'_>>) -> Vec<Result<Placed, AgentError>> {
        let mut answers = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(PLACED_TOGETHER) {
            // Asked in one message; those refused before they are asked keep their place in
            // the answers.
            let mut asked = Vec::new();
            let mut refused: Vec<Option<AgentError>> = Vec::with_capacity(chunk.len());
            for probe in chunk {
                match self.request_for(probe, asked.len()) {
                    Ok(request) => {
                        asked.push(request);
                        refused.push(None);
                    }
                    Err(e) => refused.push(Some(e)),
                }
            }
            let sent = match asked.is_empty() {
                true => Ok(()),
                false => self.tell(&Message::PlaceMany(asked.clone())),
            };
            let mut asked = asked.into_iter();
            for (probe, refusal) in chunk.iter().zip(refused) {
                let answer = match (refusal, &sent) {
                    (Some(e), _) => Err(e),
                    (None, Err(e)) => Err(self.agent_err(io::Error::new(e.kind(), e.to_string()))),
                    (None, Ok(())) => self.answered(probe, asked.next().expect("one request for each asked")),
                };
                answers.push(answer);
            }
        }
        answers
    }

    /// The filter is tested in the probed thread, by the same evaluator as dprobe's, for the
    /// probes that fetch every field it names: an event that fails it never enters the ring.
    fn prefilter(&mut self, filter: &dprobe_spec::Filter, text: &str) {
        let fields = filter.fields();
        let fetching_all: Vec<usize> = (0..self.probes.len())
            .filter(|&i| fields.iter().all(|f| self.probes[i].names.iter().any(|n| n == f)))
            .collect();
        for index in fetching_all {
            let message = Message::Filter { index: index as u32, text: text.to_owned() };
            if self.tell(&message).is_err() {
                return;
            }
            // The answer: the filter is in place before the program runs on. Not set
            // (`false`), every event comes and dprobe filters it, as it does anyway.
            if !matches!(self.receive(), Ok(Some(Message::Filtered(_)))) {
                return;
            }
            self.filters.push(message);
        }
    }

    fn run(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, AgentError> {
        if self.stacks.is_some() {
            self.unwinder.prepare(self.pid as u32);
        }
        self.release()?;
        // Asked at each look, and during the start of an agent in a program followed.
        let stop = std::cell::RefCell::new(stop);
        let give_up = || (*stop.borrow_mut())();
        loop {
            // Read before the look: a ring that comes during it cuts the wait after it short.
            let bell = self.shm.tracer_bell().load(Acquire);
            if give_up() {
                self.stop_agent()?;
                // No record comes after the agents stopped: the rings empty.
                while self.drain_all(sink) > 0 {}
                self.over = true;
                return Ok(Ending::Asked);
            }
            if let Some(ended) = self.step(sink, &give_up)? {
                // The trace ends with the program, as the ptrace engine's: the programs its
                // children executed that still run go on untraced.
                self.stop_descendants();
                while self.drain_all(sink) > 0 {}
                // A started program is reaped only now: while its events are read, `/proc`
                // still shows it (its name).
                if self.spawned {
                    let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
                }
                self.over = true;
                return Ok(ended);
            }
            if self.drain_all(sink) == 0 {
                self.wait_for_the_program(Duration::from_millis(1), bell);
            }
        }
    }

    fn remarks(&self, index: usize) -> Vec<String> {
        self.probes.get(index).and_then(|p| p.remark.clone()).into_iter().collect()
    }

    fn stats(&self, index: usize) -> Stats {
        if self.probes.get(index).is_none() {
            return Stats::default();
        }
        let get = |c| self.counted(index, c);
        // The returns read before the entries, as the counts' readers must (`HitCount::get`):
        // while the program runs on, the figures never show more returns than calls.
        let returns = get(Counter::Returns);
        let (missed, reentered) = (get(Counter::Missed), get(Counter::Reentered));
        let hits = get(Counter::Hits) + missed + reentered;
        let mut abandoned = get(Counter::Abandoned);
        // Once the trace is over, a call of a return probe that neither returned, nor was
        // missed or abandoned, is one whose return was not seen: an `exec` replaced its
        // program (the old agent counted it pending), or it had not returned when tracing
        // ended.
        let waits_for_returns = self.requests.get(index).is_some_and(|r| r.kind == ProbeKind::Return);
        if self.over && waits_for_returns {
            abandoned += hits.saturating_sub(returns + missed + reentered + abandoned);
        }
        Stats {
            hits,
            returns,
            missed,
            reentered,
            abandoned,
            lost: get(Counter::Lost),
            rearmed: get(Counter::Rearmed),
            placement: self.placement(index),
            ..Stats::default()
        }
    }

    fn notes(&self) -> Vec<String> {
        let mut shms = Vec::new();
        self.every_shm(&mut shms);
        let all = || shms.iter().copied();
        let dropped = match all().map(Shm::dropped).sum::<u64>() {
            0 => None,
            n => Some(format!("{n} events dropped: the agent's ring was full")),
        };
        let no_stack = match all().map(Shm::stacks_lost).sum::<u64>() {
            0 => None,
            n => Some(format!("{n} events without their stack: every stack slot of the agent was in use")),
        };
        let untraced = all().map(Shm::untraced_children).sum();
        let hint = match self.follow_children {
            true => "the agent follows the programs children execute through the C library's exec functions",
            false => "without --no-follow they are traced",
        };
        let mut notes: Vec<String> =
            dropped.into_iter().chain(no_stack).chain(dprobe_core::untraced_children(untraced, hint)).collect();
        self.said(&mut notes);
        notes
    }

    fn finish(mut self, wait: Option<WaitForProgram>, give_up: &dyn Fn() -> bool) -> Result<Option<Exit>, AgentError> {
        self.let_the_new_program_go();
        // The agent lowers the semaphores it raised as it removes the probes.
        let stopped = self.stop_agent();
        self.release()?;
        self.end_watch();
        stopped?;
        let Some(wait) = wait.filter(|_| self.spawned) else { return Ok(None) };
        if let Some(status) = self.status {
            return Ok(match ending_of(status) {
                Ending::Exited(exit) => Some(exit),
                _ => None,
            });
        }
        Ok(dprobe_ptrace::wait_for_command(self.pid, wait, give_up))
    }

    fn abandon(mut self) {
        self.let_the_new_program_go();
        self.end_watch();
        match self.injector.take() {
            Some(i) if self.spawned => i.abandon(),
            Some(i) => {
                // The socket's end makes the agent remove what it placed.
                let _ = self.stop_agent();
                i.abandon();
            }
            None => {
                let _ = self.stop_agent();
            }
        }
    }
}

/// `binary` as the agent must read it: a relative path (the user's, from dprobe's directory,
/// which the program's need not be) made absolute and canonical, as the kernel shows a loaded
/// object's; an absolute path or a library name as written (in the program's mount namespace,
/// a container's, links may lead elsewhere than in dprobe's).
fn object_for_the_agent(binary: &str) -> String {
    match dprobe_sym::ObjectName::new(binary) {
        Ok(dprobe_sym::ObjectName::Path(path)) if binary.contains('/') && !binary.starts_with('/') => path,
        _ => binary.to_owned(),
    }
}
