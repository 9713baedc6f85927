//! The agent inside the traced program: its entry point, called by the tracer once the
//! library is loaded, starts one thread (`dprobe-agent`) that connects to the tracer, creates
//! the shared memory, places the probes it is sent, keeps the counters the in-process engine
//! holds copied into the shared memory, and removes every probe when told to, or when the
//! control socket ends: the tracer is gone, even killed, and the program goes on as it was.

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dprobe_core::fetch::FetchPlan;
use dprobe_core::{Kprobe, PreAction, ProbeError, Regs, Side};
use dprobe_inproc::own_files::PrivateTable;
use dprobe_inproc::{register, register_kretprobe, EntryAction, Kretprobe, Probe, ReturnProbe};
use dprobe_spec::ProbeKind;

use crate::child::{end_session, follow_forks, Live, FOLLOW_CHILDREN, LIVE};
use crate::connection::Connection;
use crate::follow;
use crate::hit::{now_ns, on_agent_thread, set_agent_stack, HitProbe};
use crate::semaphore;
use crate::shm::{Counter, Shm, MAX_PROBES};
use crate::wire::{receive, send, Message, PlaceProbe, Placement};

/// A session is running (one at a time; a new tracer may start one after it ends).
pub(crate) static RUNNING: AtomicBool = AtomicBool::new(false);

/// How often the probes' `int3`s are looked at (see [`dprobe_inproc::rearm_undone`]).
const REARM_EVERY: Duration = Duration::from_millis(100);

/// The stack size of the agent's thread.
pub(crate) const STACK: usize = 1 << 20;

/// Start the agent: connect to the tracer listening on the abstract unix socket named
/// `socket`. Returns 0, or a negative number when a session is already running (-2), the
/// name is missing (-1) or no thread could be started (-3).
///
/// # Safety
/// `socket` must be a NUL-terminated string (or null).
#[no_mangle]
pub unsafe extern "C" fn dprobe_agent_start(socket: *const c_char) -> c_int {
    if socket.is_null() {
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(socket) }.to_bytes().to_vec();
    if RUNNING.swap(true, AcqRel) {
        return -2;
    }
    FOLLOW_CHILDREN.store(false, Release);
    static OWN_OBJECTS: std::sync::Once = std::sync::Once::new();
    OWN_OBJECTS.call_once(crate::own_objects::note);
    // Before the agent's thread exists: in a program held at its `exec`, the caller is its only
    // thread, and the registration costs no wait for the kernel.
    dprobe_inproc::ready_for_code_changes();
    let started = crate::agent_thread::start(STACK, move || {
        // Before the agent opens anything: none of its descriptors is ever the program's, and
        // nothing the program closes is the agent's (`own_files::PrivateTable`).
        let _table = PrivateTable::take();
        if set_agent_stack().is_err() {
            RUNNING.store(false, Release);
            return;
        }
        dprobe_inproc::mark_own_thread();
        block_signals();
        match session(&name) {
            // Told to stop: done, and another session may have started since.
            Ok(Over::Released) => {}
            Ok(Over::Ended) => {
                give_memory_back();
                RUNNING.store(false, Release);
            }
            Err(_) => {
                // However the session ended: nothing of dprobe's stays in the program's code.
                end_session(true);
                give_memory_back();
                RUNNING.store(false, Release);
            }
        }
    });
    match started {
        Ok(_) => 0,
        Err(_) => {
            RUNNING.store(false, Release);
            -3
        }
    }
}

/// What the session read of the program's files (their bytes, dprobe's images of the C library
/// and the loader, the analysis of their code, their symbols) is given back to the program, the
/// session's probes all removed: a traced program keeps only the agent's own code and tables.
/// Before the session is let go (no other has started meanwhile); a next session has it all
/// handed over again.
fn give_memory_back() {
    dprobe_sym::forget_object_files();
}

/// The program's signals are for its own threads: the agent's blocks all but those a fault or
/// a probe raises synchronously.
pub(crate) fn block_signals() {
    // SAFETY: a sigset_t we own, filled by sigfillset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A probe placed, with the address of the semaphore its placing raised, if it did.
pub(crate) enum Placed {
    Entry { probe: Probe, index: usize, hit: Arc<HitProbe>, semaphore: Option<u64> },
    Return { probe: ReturnProbe, index: usize, hit: Arc<HitProbe>, semaphore: Option<u64> },
}

impl Placed {
    fn hit(&self, index: usize) -> Option<&HitProbe> {
        match self {
            Placed::Entry { index: i, hit, .. } | Placed::Return { index: i, hit, .. } => (*i == index).then_some(hit),
        }
    }

    /// Lower the semaphore this placing raised (before the probe goes: the program stops
    /// preparing the probe's arguments first).
    fn lower_semaphore(&mut self) {
        let (Placed::Entry { semaphore, .. } | Placed::Return { semaphore, .. }) = self;
        if let Some(addr) = semaphore.take() {
            semaphore::lower(addr);
        }
    }

    fn raised(&mut self, addr: u64) {
        let (Placed::Entry { semaphore, .. } | Placed::Return { semaphore, .. }) = self;
        *semaphore = Some(addr);
    }
}

/// How long the agent leaving a program that enters a new user namespace waits for dprobe to
/// watch the program's thread (`user_namespace.rs`).
const LEAVING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// dprobe's first messages: images of the files whose bytes it hands over (the C library's,
/// `taken_images.rs`), then what it read of the program's object files
/// (`dprobe_sym::import_objects_with_images` keeps those of the versions this process maps).
/// How many were taken over (`None`: dprobe went away).
fn take_over_objects(sock: &mut Connection) -> io::Result<Option<u32>> {
    if sock.lost() {
        return Err(Connection::lost_error());
    }
    let Some(images) = crate::taken_images::receive(sock)? else { return Ok(None) };
    let mut image = |n: u32| images.get(n as usize).cloned().flatten();
    match receive(sock)? {
        Some(Message::Objects(objects)) => {
            Ok(Some(dprobe_sym::import_objects_with_images(&objects, &mut image) as u32))
        }
        Some(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected message")),
        None => Ok(None),
    }
}

/// How a session ended, every probe removed.
enum Over {
    /// The tracer asked; the session is let go already (see [`RUNNING`]).
    Released,
    /// The tracer went away.
    Ended,
}

fn session(name: &[u8]) -> io::Result<Over> {
    let mut sock = Connection::to(name)?;
    // dprobe now reads the program's files for it: the disassembler's tables are built in
    // that wait instead of at the first probe, while the program is held.
    dprobe_arch::warm_up();
    // The filters this thread runs under (a child forked under more gets no agent).
    crate::seccomp::note_agent_thread();
    // What dprobe read of the program's files, taken over before any probe is placed (their
    // registrations would read them again).
    let Some(taken_over) = take_over_objects(&mut sock)? else { return Ok(Over::Ended) };
    let mut shm = Shm::create()?;
    shm.took_over_objects(taken_over);
    let file = shm.take_file().ok_or_else(|| io::Error::other("the shared memory has no file"))?;
    let shm = Arc::new(shm);
    // The session is live before the agent changes any code: a `fork` from now on waits for
    // each change to be over, and its child removes every probe of the agent's it inherits,
    // the agent's own among them (the child of a `fork` made while they were placed kept
    // them, with no agent thread to remove them). The fork handlers after the engine's own
    // (registered by `mark_own_thread`), which run first in the child, and before the session:
    // a child forked in between finds none, and nothing to remove.
    follow_forks();
    LIVE.with(|live| *live = Some(Live::new(name, shm.clone())));
    // Then, before any code changes: no child of `posix_spawn` runs while the agent changes
    // code, its own probes' included (`dprobe_inproc::hold_spawns_while_patching`).
    LIVE.with(|live| live.as_mut().map(|l| l.spawn_hold = dprobe_inproc::hold_spawns_while_patching().ok()));
    // A thread of the program that blocks every signal, or a signal handler whose mask holds
    // `SIGTRAP`, is killed at its first hit of a probe on `int3`: such masks leave `SIGTRAP`
    // out during the session (see `keep_traps_open`). Only as jumps: a probe on `int3` there
    // would kill a handler running with such a mask already at its call to `pthread_sigmask`
    // or `sigaction`. Not where a thread blocks it already (dprobe does not choose the agent
    // for such a process): it would be killed at its next `pthread_sigmask` while the probe
    // there is placed, on `int3` until it jumps; nor where the C library's `pthread_sigmask`
    // or `sigaction` cannot be probed. Once removed, the C library's code page is the file's
    // again (`dprobe_inproc`'s `file_page.rs`).
    let blocks_traps = a_thread_blocks_traps();
    LIVE.with(|live| {
        let traps_open = (!blocks_traps)
            .then(dprobe_inproc::keep_traps_open)
            .and_then(Result::ok)
            .filter(|guard| guard.optimized().is_ok());
        live.as_mut().map(|l| l.traps_open = traps_open)
    });
    // The agent is ready for dprobe's probes: its shared memory says so.
    if sock.lost() {
        return Err(Connection::lost_error());
    }
    send_fd(&sock, file.as_raw_fd())?;
    // dprobe has it: the agent needs only the mapping (a descriptor the program could close).
    drop(file);
    // Before any probe of the tracer's: the probes that keep a child's ids right (kept as
    // jumps only, through `int3` first), those for a program that changes its ids as it
    // starts, and those for one that enters a user namespace; one batch (`own_probes.rs`).
    LIVE.with(|live| {
        let (lent_threads, credentials, user_namespaces) = crate::own_probes::place(&shm, !blocks_traps);
        live.as_mut()
            .map(|l| (l.lent_threads, l.credentials, l.user_namespaces) = (lent_threads, credentials, user_namespaces))
    });
    let mut looked = Instant::now();
    let result = loop {
        let waiting =
            || follow::pending().is_some() || crate::credentials::pending().is_some() || crate::user_namespace::asked();
        let ready = readable(&sock, &shm, 20, waiting)?;
        if sock.lost() {
            break Err(Connection::lost_error());
        }
        if let Some((asked, state)) = follow::pending() {
            LIVE.with(|live| live.as_mut().map(|l| loader_changed(l, state)));
            follow::answer(asked);
        }
        if let Some(asked) = crate::credentials::pending() {
            crate::credentials::answer(asked);
        }
        if let Some(caller) = crate::user_namespace::asked().then(crate::user_namespace::leaves).flatten() {
            // dprobe watches the caller for its `exec`; every probe goes (below), then the
            // thread: the program's call goes on alone.
            shm.leave_first(caller, crate::user_namespace::why(), LEAVING_PATIENCE, || peer_closed(&sock));
            break Ok(Over::Ended);
        }
        if looked.elapsed() >= REARM_EVERY {
            // An `int3` another tool's uprobe took away when it was removed is put back, and
            // counted (`dprobe_inproc::rearm_undone`). Behind the session's gate, as every
            // change of code is: a `fork` waits for it (`child.rs`), and the child never
            // inherits the engine's lock held by this thread, which it does not have (its
            // removal of its probes would wait for that lock for ever).
            LIVE.with(|_| dprobe_inproc::rearm_undone());
            looked = Instant::now();
            // The program's threads have all ended (its first one with `pthread_exit`): the
            // agent's must go too, or the process never ends (`program_gone.rs`).
            if crate::program_gone::program_gone() {
                break Ok(Over::Ended);
            }
        }
        if !ready {
            LIVE.with(|live| live.as_ref().map(|l| refresh(&l.placed, &shm)));
            continue;
        }
        let message = receive(&mut sock);
        if !matches!(message, Ok(Some(Message::Place(_) | Message::PlaceMany(_)))) {
            // Every probe is placed: those held off on `int3` are enabled (`held_off.rs`).
            LIVE.with(|live| live.as_mut().map(|l| crate::held_off::arm(&mut l.held_off, &l.placed)));
        }
        match message {
            Ok(Some(Message::Arm)) => {
                crate::trace_window::open();
                let notes = LIVE.with(|live| live.as_mut().map(raise_deferred).unwrap_or_default());
                for note in notes {
                    send(&mut sock, &Message::Note(note))?;
                }
                send(&mut sock, &Message::Armed)?
            }
            Ok(Some(Message::Place(p))) => {
                know_ifunc_choices(std::slice::from_ref(&p));
                let answer = LIVE.with(|live| match live {
                    Some(l) => place_asked(l, p, &shm),
                    None => Answer::ended(),
                });
                answer.send(&mut sock)?;
            }
            Ok(Some(Message::PlaceMany(probes))) => {
                know_ifunc_choices(&probes);
                let answers = LIVE.with(|live| match live {
                    Some(l) => crate::batch::place_many(l, probes, &shm),
                    None => probes.iter().map(|_| Answer::ended()).collect(),
                });
                for answer in answers {
                    answer.send(&mut sock)?;
                }
            }
            Ok(Some(Message::Filter { index, text })) => {
                let set = LIVE.with(|live| {
                    let hit = live.as_ref().and_then(|l| l.placed.iter().find_map(|p| p.hit(index as usize)));
                    hit.is_some_and(|h| h.set_filter(&text))
                });
                send(&mut sock, &Message::Filtered(set))?;
            }
            Ok(Some(Message::Children(follow))) => FOLLOW_CHILDREN.store(follow, Release),
            Ok(Some(Message::GateExec)) => {
                let gated = LIVE.with(|live| {
                    let Some(l) = live.as_mut() else { return false };
                    if !l.exec_gate.is_empty() {
                        return true;
                    }
                    crate::exec_gate::open(&l.shm).map(|probes| l.exec_gate = probes).is_ok()
                });
                send(&mut sock, &Message::ExecGated(gated))?;
            }
            Ok(Some(Message::Stop)) => {
                end_session(true);
                for note in crate::kept_jumps::notes() {
                    let _ = send(&mut sock, &Message::Note(note));
                }
                give_memory_back();
                // Over before dprobe hears so: another dprobe may start a session at once.
                RUNNING.store(false, Release);
                let _ = send(&mut sock, &Message::Stopped);
                return Ok(Over::Released);
            }
            Ok(Some(_)) => break Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected message")),
            Ok(None) => break Ok(Over::Ended),
            Err(e) => break Err(e),
        }
    };
    // The tracer went away, or sent what cannot be understood: nothing of dprobe's stays in
    // the program's code.
    end_session(true);
    result
}

/// Raise the semaphores of the probes placed before the trace's window opened (it is open
/// now): what the user should know of those that could not be.
pub(crate) fn raise_deferred(l: &mut Live) -> Vec<String> {
    let mut notes = Vec::new();
    for (index, target, s) in l.to_raise.drain(..) {
        match semaphore::raise(&s) {
            Ok(addr) => {
                let probe = l.placed.iter_mut().find(|p| p.hit(index).is_some());
                match probe {
                    Some(placed) => placed.raised(addr),
                    // Removed meanwhile: given back at once.
                    None => semaphore::lower(addr),
                }
            }
            Err(why) => {
                notes.push(format!("{target}: its semaphore is not set, the program may skip the probe: {why}"))
            }
        }
    }
    notes
}

/// What the agent answers to a probe it was asked to place: a note for the user, a detail for
/// `-v`, and where it went.
pub(crate) struct Answer {
    pub(crate) note: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) placement: Placement,
}

impl Answer {
    fn ended() -> Answer {
        Answer { note: None, detail: None, placement: Placement::Failed("the session has ended".into()) }
    }

    /// Whether the probe took an index (placed, or waiting for its library).
    pub(crate) fn took_index(&self) -> bool {
        !matches!(self.placement, Placement::Failed(_))
    }

    fn send(self, sock: &mut Connection) -> io::Result<()> {
        if let Some(note) = self.note {
            send(sock, &Message::Note(note))?;
        }
        if let Some(detail) = self.detail {
            send(sock, &Message::Detail(detail))?;
        }
        send(sock, &Message::Placed(self.placement))
    }
}

/// Place probe `p` in session `l`, as [`Message::Place`] asks.
pub(crate) fn place_asked(l: &mut Live, p: PlaceProbe, shm: &Arc<Shm>) -> Answer {
    let (mut note, mut detail) = (None, None);
    // A semaphore tells the program that the probe is there, and the program prepares the
    // probe's arguments from then on: raised once the trace's window opens
    // (`trace_window.rs`), so that every call it prepares is counted.
    let deferred = p.semaphore.clone().filter(|_| !crate::trace_window::is_open());
    let placed_now = PlaceProbe { semaphore: p.semaphore.clone().filter(|_| deferred.is_none()), ..p.clone() };
    // Loads followed first: a library the program unloads from now on waits at the loader's
    // notification until this placing is over.
    let following = follow::start(shm);
    let library = object_of(&p).is_some_and(|o| !never_unloaded(o));
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        if library && follow::loader_busy() {
            // The loader is mapping or unmapping objects: placed at the end of that change if
            // its library is loaded then.
            break Placement::Waiting;
        }
        let answer = place(placed_now.clone(), shm, &mut l.placed, &mut note, &mut detail);
        hold_off_last(l, p.index);
        if !library || !matches!(answer, Placement::Failed(_)) {
            break answer;
        }
        // Its library went, or came back elsewhere, while the probe was placed: it waits for
        // the next load, or is placed afresh.
        if object_of(&p).is_some_and(|o| !loaded(o)) {
            (note, detail) = (None, None);
            break Placement::Waiting;
        }
        if tries == 3 {
            break answer;
        }
        (note, detail) = (None, None);
    };
    if let (Some(semaphore), Placement::At(_) | Placement::Returns(..)) = (deferred, &answer) {
        l.to_raise.push((p.index as usize, p.target.clone(), semaphore));
    }
    let placement = match (answer, following) {
        (Placement::Waiting, Ok(_)) => {
            l.waiting.push(p);
            Placement::Waiting
        }
        (Placement::Waiting, Err(e)) => {
            Placement::Failed(format!("its library is not loaded, and loads cannot be followed: {e}"))
        }
        (answer @ (Placement::At(at) | Placement::Returns(at, _)), Ok(_)) if library && !crate::startup::holds(at) => {
            // Removed before the program unloads a library, placed again once the loader is
            // done, as a probe placed at a load is.
            l.followed.push(p);
            answer
        }
        (answer, _) => answer,
    };
    Answer { note, detail, placement }
}

/// Hold off the probe of `index` if it is the last placed and an entry probe on `int3`
/// (`held_off.rs`).
pub(crate) fn hold_off_last(l: &mut Live, index: u32) {
    if let Some(index) = l.placed.last().filter(|q| q.hit(index as usize).is_some()).and_then(crate::held_off::hold_off)
    {
        l.held_off.push(index);
    }
}

/// Wait up to `ms` milliseconds for the socket to have something to read (or its end), or for
/// the doorbell (`Shm::ring`: the tracer sent a message, or a program's thread waits for an
/// answer), not at all when `waiting` says a program's thread waits already: whether the
/// socket has.
pub(crate) fn readable(sock: &UnixStream, shm: &Shm, ms: i64, waiting: impl Fn() -> bool) -> io::Result<bool> {
    let bell = shm.doorbell();
    let rung = bell.load(Acquire);
    if socket_readable(sock)? {
        return Ok(true);
    }
    if !waiting() {
        let timeout = libc::timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
        // Shared (not private): the tracer rings it from its process.
        dprobe_inproc::raw_calls::futex_wait(bell, rung, &timeout, false);
    }
    socket_readable(sock)
}

/// Whether dprobe closed its end of the connection (it went away).
fn peer_closed(sock: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into `byte`, without waiting.
    let n =
        unsafe { libc::recv(sock.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n == 0
}

/// Whether the socket has something to read now (or its end).
fn socket_readable(sock: &UnixStream) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(pfd.revents != 0)
}

/// The loader is about to unmap objects (`RT_DELETE`): the probes placed in libraries loaded
/// later are removed while their code is still there, and wait again; or its list of objects
/// is consistent again: the probes waiting for a library now loaded are placed.
fn loader_changed(l: &mut Live, state: i32) {
    if state == follow::RT_DELETE {
        for p in std::mem::take(&mut l.followed) {
            let index = p.index as usize;
            if let Some(at) = l.placed.iter().position(|q| q.hit(index).is_some()) {
                forget(l.placed.remove(at), &l.shm);
            }
            l.shm.set(index, Counter::PlacedAt, 0);
            l.waiting.push(p);
        }
    } else if state == follow::RT_CONSISTENT {
        // Reading every object's symbols costs milliseconds: only when a waited-for library came.
        let object = |p: &PlaceProbe| p.target.split_once(':').map_or("", |(o, _)| o).to_owned();
        if !l.waiting.iter().any(|p| loaded(&object(p))) {
            return;
        }
        let maps = dprobe_sym::read_maps().unwrap_or_default();
        // Symbols read afresh: the library may be back at another address.
        let symbols = dprobe_sym::Symbols::load(&maps);
        for p in std::mem::take(&mut l.waiting) {
            let at = dprobe_spec::parse_point(&p.target).ok().and_then(|point| symbols.resolve(&maps, &point).ok());
            let placed = at.is_some_and(|t| {
                let here = PlaceProbe { target: format!("0x{:x}", t.addr.0), ..p.clone() };
                let (Placement::At(addr) | Placement::Returns(addr, _)) =
                    place(here, &l.shm, &mut l.placed, &mut None, &mut None)
                else {
                    return false;
                };
                l.shm.set(p.index as usize, Counter::PlacedAt, addr);
                l.shm.add(p.index as usize, Counter::Loads, 1);
                true
            });
            if placed {
                l.followed.push(p);
            } else {
                if loaded_in(&maps, &object(&p)) {
                    // Said in the summary, rather than "never loaded".
                    l.shm.set(p.index as usize, Counter::RefusedAtLoad, 1);
                }
                l.waiting.push(p);
            }
        }
    }
}

/// The choices of indirect functions that dprobe's process made, for libraries this program
/// is loading (not relocated yet: see `dprobe_sym::IfuncChoice`).
fn know_ifunc_choices(probes: &[PlaceProbe]) {
    for choice in probes.iter().filter_map(|p| p.ifunc_choice) {
        dprobe_sym::know_ifunc_choice(choice);
    }
}

/// The object a probe's target names (`libx.so` of `libx.so:xfunc`), if it names one.
pub(crate) fn object_of(p: &PlaceProbe) -> Option<&str> {
    p.target.split_once(':').map(|(o, _)| o)
}

/// Whether `object` names what the loader never unloads: the program itself, the C library or
/// the loader. A probe placed on another library is removed whenever the program unloads a
/// library and placed again once the loader is done (which library goes is not known before),
/// unless it was placed in a library loaded with the program (`startup.rs`).
pub(crate) fn never_unloaded(object: &str) -> bool {
    let (Ok(name), Ok(maps)) = (dprobe_sym::ObjectName::new(object), dprobe_sym::read_maps()) else { return false };
    let program = std::fs::read_link("/proc/self/exe").ok();
    maps.iter()
        .filter_map(|m| m.path.as_deref())
        .filter(|path| name.matches(path))
        .any(|path| dprobe_sym::is_c_library_or_loader(path) || program.as_deref() == Some(std::path::Path::new(path)))
}

/// Remove a probe whose library is being unloaded, keeping its figures for its next placing.
fn forget(mut p: Placed, shm: &Shm) {
    let carried = &follow::CARRIED;
    p.lower_semaphore();
    match p {
        Placed::Return { probe, index, .. } => {
            if let Ok(s) = probe.unregister() {
                set_return_figures(shm, index, &s);
                for (k, v) in [s.missed, s.reentered, s.abandoned].into_iter().enumerate() {
                    carried[index][k].fetch_add(v, Relaxed);
                }
            }
        }
        Placed::Entry { probe, index, .. } => {
            carried[index][1].fetch_add(probe.nmissed(), Relaxed);
            let _ = dprobe_inproc::unregister_all(vec![probe]);
        }
    }
}

fn send_fd(sock: &UnixStream, fd: i32) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    let iov = [io::IoSlice::new(b"R")];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Copy the figures once more as the program exits (`exit`, or `main` returning): the session
/// thread copies them every 20 ms, and a program that runs for less, or whose last calls were
/// unwound by an exception just before it ended, would otherwise leave the tracer figures
/// without those calls (returns abandoned, hits missed) and no note saying why. A program
/// that leaves by `_exit` skips this: figures of its last 20 ms may be missing.
///
/// The returns still pending then never come (a call of the function that exits, or of a
/// child's `execve` made on the program's memory): they count as not seen, as the other
/// engines count them.
/// The session thread's copies (every 20 ms) go on while the program exits: from then on they
/// count the pending returns too, or the last copy would take them back.
extern "C" fn copy_figures_at_exit() {
    crate::own_objects::mark_the_exit();
    LIVE.with(|live| {
        let Some(l) = live.as_ref() else { return };
        refresh(&l.placed, &l.shm);
    });
}

#[used]
#[link_section = ".fini_array"]
static COPY_FIGURES_AT_EXIT: extern "C" fn() = copy_figures_at_exit;

/// Copy the figures the in-process engine keeps into the shared memory.
fn refresh(placed: &[Placed], shm: &Shm) {
    for p in placed {
        match p {
            Placed::Return { probe, index, .. } => {
                let mut stats = probe.stats();
                // As the program exits, the returns still pending count as not seen.
                if crate::own_objects::exiting() {
                    stats.abandoned += probe.pending();
                }
                set_return_figures(shm, *index, &stats);
            }
            Placed::Entry { probe, index, .. } => {
                let s = probe.stats();
                let carried = follow::CARRIED[*index][1].load(Relaxed);
                shm.set(*index, Counter::Reentered, s.reentered + carried);
                shm.set(*index, Counter::Rearmed, s.rearmed);
            }
        }
    }
}

fn set_return_figures(shm: &Shm, index: usize, s: &dprobe_core::Stats) {
    let carried = |k: usize| follow::CARRIED[index][k].load(Relaxed);
    shm.set(index, Counter::Missed, s.missed + carried(0));
    shm.set(index, Counter::Reentered, s.reentered + carried(1));
    shm.set(index, Counter::Abandoned, s.abandoned + carried(2));
    shm.set(index, Counter::Rearmed, s.rearmed);
}

/// Unregister every probe (their original bytes are back when this returns) and record
/// their last figures in `shm`, if given.
pub(crate) fn remove(placed: &mut Vec<Placed>, shm: Option<&Shm>) {
    if let Some(shm) = shm {
        refresh(placed, shm);
    }
    placed.iter_mut().for_each(Placed::lower_semaphore);
    let mut entries = Vec::new();
    for p in placed.drain(..) {
        match p {
            Placed::Entry { probe, .. } => entries.push(probe),
            Placed::Return { probe, index, .. } => {
                if let (Ok(s), Some(shm)) = (probe.unregister(), shm) {
                    set_return_figures(shm, index, &s);
                }
            }
        }
    }
    let _ = dprobe_inproc::unregister_all(entries);
}

/// The probe's place as the tracer named it (`[OBJECT:]FUNCTION` or `0xADDR`, and an offset).
fn named(p: &PlaceProbe) -> Kprobe {
    Kprobe::symbol_offset(&p.target, p.offset)
}

/// Place probe `p`, and raise its semaphore once it is placed (or say in `note` why not);
/// `detail` says how an entry probe's hits reach its handler.
fn place(
    p: PlaceProbe,
    shm: &Arc<Shm>,
    placed: &mut Vec<Placed>,
    note: &mut Option<String>,
    detail: &mut Option<String>,
) -> Placement {
    let index = p.index as usize;
    if let Some(why) = index_refused(index, placed) {
        return Placement::Failed(why);
    }
    let hit = new_hit(&p, shm);
    let kept = hit.clone();
    let result = if p.kind == ProbeKind::Return || p.timed {
        let mut k = Kretprobe::on(named(&p));
        if p.maxactive > 0 {
            k = k.maxactive(p.maxactive as usize);
        }
        let on_entry = hit.clone();
        let k = k
            .entry_handler(move |regs, data| {
                let _tool = dprobe_inproc::tool_work();
                if dprobe_s_own(regs, true) || !crate::trace_window::is_open() {
                    return EntryAction::Skip;
                }
                on_entry.count(Counter::Hits);
                data.0 = [regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9, regs.rsp, now_ns()];
                EntryAction::Track
            })
            .handler(move |regs, data| {
                let _tool = dprobe_inproc::tool_work();
                hit.count(Counter::Returns);
                if !hit.sends_events() {
                    return;
                }
                let d = data.0;
                let entry = Regs {
                    rdi: d[0],
                    rsi: d[1],
                    rdx: d[2],
                    rcx: d[3],
                    r8: d[4],
                    r9: d[5],
                    rsp: d[6],
                    ..Regs::default()
                };
                hit.event(regs, Some(&entry), Side::Return, Some(d[7]));
            });
        register_kretprobe(k).map(|probe| {
            let at = Placement::Returns(probe.addr().0, probe.return_mode().clone());
            placed.push(Placed::Return { probe, index, hit: kept, semaphore: None });
            at
        })
    } else {
        register(entry_probe(&p, hit)).map(|probe| entry_placed(probe, index, kept, placed, note, detail))
    };
    match result {
        Ok(at) => {
            if let (Placement::At(addr) | Placement::Returns(addr, _), Some(last)) = (&at, placed.last()) {
                let (Placed::Entry { hit, .. } | Placed::Return { hit, .. }) = last;
                hit.placed_at(*addr);
            }
            if let (Some(s), Some(last)) = (&p.semaphore, placed.last_mut()) {
                match semaphore::raise(s) {
                    Ok(addr) => last.raised(addr),
                    Err(why) => {
                        let semaphore = format!("its semaphore is not set, the program may skip the probe: {why}");
                        *note = Some(note.take().map_or(semaphore.clone(), |n| format!("{n}; {semaphore}")));
                    }
                }
            }
            at
        }
        Err(e) => refused(&p, e),
    }
}

/// The answer to `p` refused with `e`: waiting, where its object is not loaded (yet).
pub(crate) fn refused(p: &PlaceProbe, e: ProbeError) -> Placement {
    match e {
        ProbeError::Target(
            dprobe_sym::ResolveError::SymbolNotFound { .. } | dprobe_sym::ResolveError::ObjectNotLoaded { .. },
        ) if object_of(p).is_some_and(|o| !loaded(o)) => Placement::Waiting,
        e => Placement::Failed(e.to_string()),
    }
}

/// Why probe index `index` cannot be given (`None`: it can).
pub(crate) fn index_refused(index: usize, placed: &[Placed]) -> Option<String> {
    (index >= MAX_PROBES || placed.iter().any(|q| q.hit(index).is_some()))
        .then(|| format!("probe index {index} is out of range or taken"))
}

/// What counts and sends probe `p`'s hits.
pub(crate) fn new_hit(p: &PlaceProbe, shm: &Arc<Shm>) -> Arc<HitProbe> {
    let plan = FetchPlan::compile(&p.args, None);
    Arc::new(HitProbe::new(p.index as usize, plan, p.events, p.stack, shm.clone()))
}

/// Whether a hit with registers `regs` (`at_entry`: at a function's first instruction) is a
/// call of dprobe's own: made by the agent's thread, or by the agent's objects as the
/// program exits (`own_objects.rs`).
fn dprobe_s_own(regs: &Regs, at_entry: bool) -> bool {
    on_agent_thread(regs.rsp) || crate::own_objects::called_at_exit(regs, at_entry)
}

/// The entry probe of `p`, its hits counted and sent by `hit`.
pub(crate) fn entry_probe(p: &PlaceProbe, hit: Arc<HitProbe>) -> Kprobe {
    let at_entry = p.offset == 0;
    named(p).pre(move |regs| {
        // What the handler calls (a probed `memset`) is dprobe's, not the program's.
        let _tool = dprobe_inproc::tool_work();
        if crate::trace_window::is_open() && !dprobe_s_own(regs, at_entry) {
            hit.count(Counter::Hits);
            hit.event(regs, None, Side::Entry, None);
        }
        PreAction::Continue
    })
}

/// Entry probe `probe` of index `index` is placed: kept in `placed`; `detail` says how its
/// hits reach the handler, `note` why each traps when the reason is not dprobe's.
pub(crate) fn entry_placed(
    probe: Probe,
    index: usize,
    hit: Arc<HitProbe>,
    placed: &mut Vec<Placed>,
    note: &mut Option<String>,
    detail: &mut Option<String>,
) -> Placement {
    let addr = probe.addr();
    *detail = Some(jump_or_trap(&probe));
    if let Err(why) = probe.optimized() {
        if why.is_outside_dprobe() {
            // Each hit traps (a signal and a return from it): slower, and the user may not
            // know another tool is there.
            *note = Some(format!("each hit traps (no jump to a detour): {why}"));
        }
    }
    placed.push(Placed::Entry { probe, index, hit, semaphore: None });
    Placement::At(addr.0)
}

/// How a placed entry probe's hits reach its handler: a jump to its detour, or a trap and
/// why (what `-v` shows, and what its cost per hit depends on).
fn jump_or_trap(probe: &Probe) -> String {
    match probe.optimized() {
        Ok(()) => "jump-optimized (no trap)".to_owned(),
        Err(why) => format!("on int3, a trap per hit: {why}"),
    }
}

/// Whether a thread of this process blocks `SIGTRAP`, or its threads cannot be read
/// (`masks.rs`).
fn a_thread_blocks_traps() -> bool {
    crate::masks::thread_blocking_traps(std::process::id()).map_or(true, |t| t.is_some())
}

/// Whether an object matching `name` (`libc`, `libfoo.so.1`, a path) is mapped, as every
/// engine matches them (`dprobe_sym::ObjectName`: a path by its canonical file).
fn loaded(name: &str) -> bool {
    let Ok(maps) = dprobe_sym::read_maps_of(std::process::id()) else { return true };
    loaded_in(&maps, name)
}

/// [`loaded`], in maps already read.
fn loaded_in(maps: &[dprobe_sym::Mapping], name: &str) -> bool {
    let object = dprobe_sym::ObjectName::new(name);
    // A path that cannot be read here (yet) is compared as written. Loaded: its code is mapped,
    // as symbols are read (not an object the loader is still mapping, whose first pages are
    // there before its code; nor dprobe's read-only alias of a code page, `dprobe_inproc`'s
    // `page_alias.rs`).
    maps.iter()
        .filter(|m| m.exec)
        .filter_map(|m| m.path.as_deref())
        .any(|path| object.as_ref().map_or(path == name, |o| o.matches(path)))
}
