//! The agent's first contact: dprobe listens on an abstract socket named for the session, loads
//! the agent with that name, and waits for the agent's thread to connect and send its shared
//! memory.
//!
//! Once connected, dprobe sends what it read of the program's files (`objects_for`), which the
//! agent takes over before it places the probes it needs for itself (a safepoint each,
//! seconds on a busy process); it sends its shared memory once they are placed, so the wait
//! is long. It is cut short by what makes it impossible: the process ended or executed
//! another program (the agent went with its memory), or the caller gives up (a stop signal).

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use dprobe_ptrace::{Injector, LoadError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::images::Images;
use super::{agent_mapped, process_gone, unanswered, AgentError, OwnedLibrary, ANSWER_TIMEOUT};
use crate::shm::Shm;
use crate::wire::{Message, MAX_OBJECTS};

/// How the names of dprobe's listeners for agents begin: `dprobe-agent.DPROBE.N.PID`, for the
/// agent in process PID, the Nth session of dprobe's process DPROBE.
const LISTENER: &str = "dprobe-agent.";

/// How often the wait for the agent's connection looks at the process (its end, its `exec`)
/// and asks whether to give up.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// How long the wait goes on once the caller gives up: an agent that connects meanwhile (its
/// start takes a tenth of a second or so) is the caller's to stop, so that the process is as
/// it was when dprobe ends; one that does not ends its session by itself later, finding no
/// one to connect to.
const GRACE: Duration = Duration::from_secs(2);

/// The dprobe process (other than this one) whose listener for an agent in process `pid` is
/// open, if any: that dprobe traces it with the agent now (its abstract socket, in
/// `/proc/net/unix`).
pub fn listener_for_agent_in(pid: i32) -> Option<u32> {
    // The process's network namespace's sockets (a listener for it is bound there).
    let sockets = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
    sockets.lines().find_map(|line| {
        let name = line.split_whitespace().nth(7)?.strip_prefix('@')?.strip_prefix(LISTENER)?;
        let mut parts = name.split('.');
        let (dprobe, _, traced) = (parts.next()?.parse::<u32>().ok()?, parts.next()?, parts.next()?);
        (traced.parse::<i32>().ok()? == pid && dprobe != std::process::id()).then_some(dprobe)
    })
}

/// The listener a new agent in process `pid` connects to, and its name.
pub(super) fn listen(pid: i32) -> Result<(UnixListener, String), AgentError> {
    let agent_err = |error| AgentError::Agent { pid, error: unanswered(error) };
    static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{LISTENER}{}.{n}.{}", std::process::id(), pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(agent_err)?;
    let listener = match network_namespace_of(pid) {
        Some(theirs) => bind_in(&theirs, &addr).map_err(|e| {
            AgentError::Refused(format!(
                "process {pid} is in a network namespace of its own, where dprobe cannot listen for its agent ({e})"
            ))
        })?,
        None => UnixListener::bind_addr(&addr).map_err(agent_err)?,
    };
    Ok((listener, name))
}

/// Process `pid`'s network namespace, where it is not dprobe's: an abstract socket's name
/// is known only in the namespace it was bound in (`unshare --net`, `ip netns exec`, a
/// container), and the agent looks for dprobe's by that name.
fn network_namespace_of(pid: i32) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    let same = theirs.metadata().is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
    (!same).then_some(theirs)
}

/// A listener bound to `addr` in the network namespace `ns`: by a thread of dprobe's that
/// enters it for that alone (a thread's network namespace is its own; the socket stays in the
/// namespace it was made in, and dprobe accepts on it from any).
fn bind_in(ns: &std::fs::File, addr: &SocketAddr) -> io::Result<UnixListener> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                UnixListener::bind_addr(addr)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread that binds it failed")))
    })
}

/// Load the agent through held `injector` and call its start with the listener's `name`;
/// what the start returned.
fn start_agent(injector: &mut Injector, library: &OwnedLibrary, name: &str) -> Result<u64, LoadError> {
    const ENTRY: &str = "dprobe_agent_start";
    match library {
        OwnedLibrary::Image(image) => injector.load_shared_image(image, ENTRY, name),
        OwnedLibrary::File(path) => injector.load_library(&path.to_string_lossy(), ENTRY, name),
    }
}

/// What the agent's start returns when a session of another dprobe's is still running in the
/// process.
const ANOTHER_SESSION: i32 = -2;

/// How long an attach waits for the session of a dprobe that is gone to end (its agent
/// removing its probes: a tenth of a second or so) before it says another dprobe traces the
/// process.
const ENDING_SESSION_PATIENCE: Duration = Duration::from_secs(3);

/// Load the agent into running process `pid` (a thread of its held for the call) and start
/// it with the listener's `name`; what the start returned, and where the thread was held. A
/// session of a dprobe that is gone (no listener of its own for the process any more: killed,
/// say) is still ending for a moment, its agent removing its probes: the start is tried again
/// until it has ended, unless `give_up` says so first.
pub(super) fn start_attached(
    pid: i32,
    library: &OwnedLibrary,
    name: &str,
    give_up: &dyn Fn() -> bool,
) -> Result<(u64, String), AgentError> {
    let refusal = || under_a_seccomp_filter(pid).or_else(|| stopped(pid));
    if let Some(why) = refusal().or_else(|| dprobe_ptrace::shared_memory_refusal(pid)) {
        return Err(AgentError::Refused(why));
    }
    let deadline = Instant::now() + ENDING_SESSION_PATIENCE;
    loop {
        let program = program_identity(pid);
        let attached = Injector::attached(pid, |held| {
            let held_where = held.held_where().to_owned();
            start_agent(held, library, name).map(|started| (started, held_where))
        });
        let (started, held_where) = match attached {
            Ok(attached) => attached,
            // The thread seized gone, its id another's, the process without memory for a
            // moment: what an `exec` from another thread does to an attach, said as such.
            Err(_) if program.is_some() && executed_since(pid, program.as_deref()) => {
                return Err(AgentError::ExecutedAttaching(pid))
            }
            Err(e) => return Err(e.into()),
        };
        let ending = started as i32 == ANOTHER_SESSION && listener_for_agent_in(pid).is_none();
        if !ending || Instant::now() >= deadline || give_up() {
            return Ok((started, held_where));
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// What differs between two programs process `pid` runs one after the other: its auxiliary
/// vector (the program's entry and headers, where the kernel put its random bytes), and those
/// 16 random bytes, new at each `exec` (without address randomization the same program run
/// again has the same vector). `None` where it cannot be read; read again for a moment where
/// the process has no memory (in the middle of an `exec`, or ending).
fn program_identity(pid: i32) -> Option<Vec<u8>> {
    let deadline = Instant::now() + EXEC_LOOKS_ENDED;
    loop {
        match std::fs::read(format!("/proc/{pid}/auxv")) {
            Ok(mut auxv) if !auxv.is_empty() => {
                auxv.extend_from_slice(&random_bytes(pid, &auxv).unwrap_or_default());
                return Some(auxv);
            }
            _ if Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return None,
        }
    }
}

/// Whether process `pid` runs another program than the one whose identity was `before`. An
/// `exec` gives the process its new memory a moment after the thread that executes takes the
/// process's id (the attach saw its thread gone): that moment is waited for.
fn executed_since(pid: i32, before: Option<&[u8]>) -> bool {
    let deadline = Instant::now() + EXEC_LOOKS_ENDED;
    loop {
        if program_identity(pid).as_deref() != before {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The 16 random bytes the kernel gave the program process `pid` runs, where its auxiliary
/// vector `auxv` says they are (`AT_RANDOM`).
fn random_bytes(pid: i32, auxv: &[u8]) -> Option<[u8; 16]> {
    use std::os::unix::fs::FileExt;
    let at = dprobe_ptrace::auxv_value(auxv, libc::AT_RANDOM)?;
    let mut bytes = [0u8; 16];
    std::fs::File::open(format!("/proc/{pid}/mem")).ok()?.read_exact_at(&mut bytes, at).ok()?;
    Some(bytes)
}

/// Load the agent through held `injector` and start it: the listener its forked children
/// announce themselves to, its connection, its shared memory.
pub(super) fn load(
    injector: &mut Injector,
    library: &OwnedLibrary,
    give_up: &dyn Fn() -> bool,
) -> Result<(UnixListener, UnixStream, Shm), AgentError> {
    let pid = injector.pid();
    if let Some(why) = under_a_seccomp_filter(pid) {
        return Err(AgentError::Refused(why));
    }
    let (listener, name) = listen(pid)?;
    let started = start_agent(injector, library, &name)?;
    connect(pid, listener, started, give_up)
}

/// Why the agent is not loaded into process `pid`, where one of its threads runs under a
/// seccomp filter of its own (one its program installed, for the process or for that thread
/// alone, or a program it executed inherited), or in strict mode: the agent's thread would run
/// under a process's filter too, and it may forbid, or kill the process for, a system call the
/// program itself never makes (its socket, its memory files); a filtered thread's own hits
/// make system calls too (`sigaltstack`), which a filter of that thread alone may kill the
/// process for (a worker's, set with `prctl`: killed at its first hit). The filters dprobe
/// runs under itself (a container's) are no reason in a process dprobe started, which has
/// them from dprobe; any filter is, in another (a service with filters of its own), and so is
/// any where the kernel does not say how many a thread has.
fn under_a_seccomp_filter(pid: i32) -> Option<String> {
    let (own_mode, own) = dprobe_ptrace::seccomp_status("/proc/self/status").unwrap_or((0, Some(0)));
    let descends = dprobe_ptrace::descends_from_this_process(pid);
    let inherited = |mode: u32, filters: u32| own_mode == mode && own.is_some_and(|own| filters <= own) && descends;
    let why = |(mode, filters): (u32, Option<u32>)| match (mode, filters) {
        (1, _) => Some("runs in seccomp's strict mode"),
        (2, Some(filters)) if !inherited(mode, filters) => Some("runs under a seccomp filter of its own"),
        (2, None) if own_mode == 0 => Some("runs under a seccomp filter of its own"),
        _ => None,
    };
    dprobe_ptrace::thread_ids(pid).ok()?.into_iter().find_map(|tid| {
        let why = why(dprobe_ptrace::seccomp_status(&format!("/proc/{pid}/task/{tid}/status"))?)?;
        let who = if tid == pid { format!("process {pid}") } else { format!("thread {tid} of process {pid}") };
        Some(format!(
            "{who} {why}, which may forbid the system calls of the agent's thread (a socket, a memory file) and of \
             its hits, or kill the program for them"
        ))
    })
}

/// Why the agent is not loaded into process `pid` now, where every thread of it is stopped
/// (`SIGSTOP`, Ctrl-Z): the agent's thread, started in it, would stop with it and never
/// connect (dprobe waited its whole 30 s for it, then said only that it did not connect).
fn stopped(pid: i32) -> Option<String> {
    let state = |stat: String| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let states: Vec<Option<char>> =
        tasks.map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok().and_then(state)).collect();
    // A first thread that ended (a zombie) stops no more: the others say.
    let living = states.iter().filter(|s| **s != Some('Z'));
    let all_stopped = living.clone().count() > 0 && living.into_iter().all(|s| *s == Some('T'));
    all_stopped.then(|| {
        format!(
            "process {pid} is stopped (SIGSTOP, or Ctrl-Z in its shell), and the agent's thread would stop with it: \
             continue it first (`kill -CONT {pid}`), or use --engine ptrace"
        )
    })
}

/// Take the connection of the agent started in process `pid` (its start returned `started`),
/// hand it what dprobe read of the program's files, and take its shared memory, sent once it
/// has placed the probes it needs for itself; [`AgentError::GaveUp`] as soon as `give_up` says
/// so.
pub(super) fn connect(
    pid: i32,
    listener: UnixListener,
    started: u64,
    give_up: &dyn Fn() -> bool,
) -> Result<(UnixListener, UnixStream, Shm), AgentError> {
    let agent_err = |error| AgentError::Agent { pid, error: unanswered(error) };
    if started != 0 {
        let reason = if started as i32 == ANOTHER_SESSION {
            "another dprobe traces it with the agent"
        } else {
            "the agent did not start"
        };
        return Err(AgentError::Refused(format!("process {pid}: {reason}")));
    }
    let mut wait = AgentWait::new(pid, give_up);
    // (The listener is left non-blocking: forked children's agents are accepted as they come.)
    let sock = accepted(&listener, &mut wait)?;
    // Where the connection fails, the process may have ended or executed another program
    // meanwhile: that is what is said.
    let failed = |error| why_it_failed(pid, error).unwrap_or_else(&agent_err);
    // Written as the agent reads it (hundreds of kilobytes: more than the socket holds), each
    // wait for room cut short as the wait for the connection is.
    let (objects, images) = objects_for(pid);
    let objects = crate::wire::framed(&Message::Objects(objects));
    // The images first (a socket this new holds their byte at once), then the message that
    // numbers them.
    send_images(&sock, &images).map_err(failed)?;
    sock.set_nonblocking(true).map_err(agent_err)?;
    let mut rest = &objects[..];
    while !rest.is_empty() {
        match (&sock).write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                wait.ready(sock.as_fd(), PollFlags::POLLOUT, "take what dprobe read of its files")?;
            }
            Err(e) => return Err(failed(e)),
        }
    }
    sock.set_nonblocking(false).map_err(agent_err)?;
    while !wait.ready(sock.as_fd(), PollFlags::POLLIN, "send its shared memory")? {}
    sock.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(agent_err)?;
    let fd = receive_fd(&sock).map_err(failed)?;
    let shm = Shm::open(fd).map_err(agent_err)?;
    Ok((listener, sock, shm))
}

/// What dprobe read of the files process `pid` maps as code (its symbols, and for the C
/// library and the loader, which the agent's own probes are in, the jump check's index of its
/// code and an image of its bytes), for the agent to take over instead of reading them again:
/// in a traced shell, every program it executes maps the same files. Empty where it would not
/// fit in a message.
fn objects_for(pid: i32) -> (Vec<u8>, Images) {
    let maps = dprobe_sym::read_maps_of(pid as u32).unwrap_or_default();
    let mut paths = dprobe_sym::code_files(&maps);
    let mut images = Images::default();
    let analyse = dprobe_sym::is_c_library_or_loader;
    let mut objects = dprobe_sym::export_objects_with_images(&paths, analyse, &mut |v, b| images.number_of(v, b));
    if objects.len() >= MAX_OBJECTS as usize {
        paths.retain(|p| analyse(p));
        images = Images::default();
        objects = dprobe_sym::export_objects_with_images(&paths, |_| true, &mut |v, b| images.number_of(v, b));
    }
    if objects.len() >= MAX_OBJECTS as usize {
        objects.clear();
        images = Images::default();
    }
    (objects, images)
}

/// Send the descriptors of `images` (none at all, too: the agent reads this message first).
fn send_images(sock: &UnixStream, images: &Images) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsRawFd, RawFd};
    let fds: Vec<RawFd> = images.0.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let iov = [io::IoSlice::new(b"I")];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map(drop).map_err(io::Error::from),
        }
    }
}

/// The agent's connection (see [`AgentWait`]).
fn accepted(listener: &UnixListener, wait: &mut AgentWait<'_>) -> Result<UnixStream, AgentError> {
    let pid = wait.pid;
    let agent_err = |error| AgentError::Agent { pid, error };
    listener.set_nonblocking(true).map_err(agent_err)?;
    loop {
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false).map_err(agent_err)?;
                return Ok(sock);
            }
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(agent_err(e)),
            Err(_) => {}
        }
        wait.ready(listener.as_fd(), PollFlags::POLLIN, "connect")?;
    }
}

/// The wait for an agent's start in process `pid`: its connection, then its shared memory, all
/// within [`ANSWER_TIMEOUT`], unless the process can no longer make them, or `give_up` said so
/// [`GRACE`] ago.
struct AgentWait<'a> {
    pid: i32,
    give_up: &'a dyn Fn() -> bool,
    deadline: Instant,
    looked: Instant,
    gave_up: Option<Instant>,
}

impl<'a> AgentWait<'a> {
    fn new(pid: i32, give_up: &'a dyn Fn() -> bool) -> AgentWait<'a> {
        let now = Instant::now();
        AgentWait { pid, give_up, deadline: now + ANSWER_TIMEOUT, looked: now, gave_up: None }
    }

    /// Wait until `fd` is ready for `events` (readable, or with room to write) or the next look
    /// at the process is due: whether it is ready, or why the wait ends (the agent did not
    /// `what` in time).
    fn ready(&mut self, fd: BorrowedFd<'_>, events: PollFlags, what: &str) -> Result<bool, AgentError> {
        if Instant::now() >= self.deadline {
            let late = format!("it did not {what} within {ANSWER_TIMEOUT:?}");
            return Err(AgentError::Agent { pid: self.pid, error: io::Error::new(io::ErrorKind::TimedOut, late) });
        }
        if self.looked.elapsed() >= LOOK_EVERY {
            self.looked = Instant::now();
            if self.gave_up.is_none() && (self.give_up)() {
                self.gave_up = Some(Instant::now());
            }
            if self.gave_up.is_some_and(|at| at.elapsed() >= GRACE) {
                return Err(AgentError::GaveUp);
            }
            if let Some(why) = cannot_connect(self.pid) {
                return Err(why);
            }
        }
        // Until the fd is ready (taken at once) or the next look is due.
        let next_look = LOOK_EVERY.saturating_sub(self.looked.elapsed());
        let timeout = PollTimeout::try_from(next_look).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(fd, events)];
        let _ = poll(&mut fds, timeout);
        Ok(fds[0].revents().is_some_and(|r| !r.is_empty()))
    }
}

/// How long a process's end may take from its agent's connection's end to its memory's: the
/// agent's thread has a descriptor table of its own, closed as that thread ends, while the
/// process's other threads still end (a thread that spins takes its time to be stopped).
const ENDING_TAKES_AT_MOST: Duration = Duration::from_secs(1);

/// Why the connection with the agent in process `pid` failed with `error`: the process ended
/// or executed another program (looked at for a moment where the connection ended, which
/// comes first), else `error` itself.
pub(super) fn why_it_failed(pid: i32, error: io::Error) -> Result<AgentError, io::Error> {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let ended = matches!(error.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof);
    let deadline = Instant::now() + ENDING_TAKES_AT_MOST;
    loop {
        if let Some(why) = cannot_connect(pid) {
            return Ok(why);
        }
        if !ended || Instant::now() >= deadline {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Why the agent loaded into process `pid` can no longer connect, if it cannot: the process
/// ended, or executed another program (the agent's memory file is gone from its mappings).
///
/// A thread other than the first that executes a program leaves the process's first thread a
/// zombie with no memory for a moment, beside the executing thread: a process seen so is
/// looked at again for up to [`EXEC_LOOKS_ENDED`] (one that ended is a zombie alone, at once).
fn cannot_connect(pid: i32) -> Option<AgentError> {
    let deadline = Instant::now() + EXEC_LOOKS_ENDED;
    loop {
        match looked_at(pid) {
            Look::NoMemory if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Look::Gone | Look::NoMemory => return Some(AgentError::EndedFirst(pid)),
            Look::Executed => return Some(AgentError::ExecutedFirst(pid)),
            Look::AgentThere => return None,
        }
    }
}

/// How long an `exec` by a thread other than the first may leave its process without memory.
const EXEC_LOOKS_ENDED: Duration = Duration::from_millis(300);

/// What one look at a process whose agent's connection ended finds.
enum Look {
    /// It ended.
    Gone,
    /// Its threads live on, but it has no memory: ending, or a thread executing a program.
    NoMemory,
    /// It runs another program: the agent is not in its memory.
    Executed,
    /// The agent is still there (or the process cannot be looked at).
    AgentThere,
}

fn looked_at(pid: i32) -> Look {
    if process_gone(pid) {
        return Look::Gone;
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return Look::AgentThere };
    match maps.is_empty() {
        true => Look::NoMemory,
        false if !agent_mapped(&maps) => Look::Executed,
        false => Look::AgentThere,
    }
}

/// The shared memory's descriptor, the agent's first message.
fn receive_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    // A socket with a receive timeout is not restarted after a signal handler (signal(7)): a
    // stop signal caught meanwhile must not end the attach with an error.
    let msg = loop {
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    if msg.bytes == 0 {
        // The connection's end (the agent's process ended, or executed another program).
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the connection"));
    }
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "the agent sent no shared memory"))
}
