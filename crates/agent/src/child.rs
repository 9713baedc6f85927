//! A forked child keeps the agent when dprobe follows children. `fork` copies the probes (the
//! child's code is patched as the parent's), the shared memory (its events and counts go to
//! the same ring and counters, with its own process id) and the list of probes placed, but not
//! the agent's thread: the child starts one of its own, which announces the child to dprobe
//! and removes the child's probes when dprobe stops, goes away, or cannot be reached. When
//! dprobe does not follow children, the child's probes are removed before `fork` returns in
//! it: the child runs untraced from its first instruction of its own.
//!
//! The list of probes is behind a gate that a fork holds from before to after (a spin lock:
//! the child's copy must never be caught half-changed, nor locked by a thread it does not
//! have).

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;

use crate::connection::Connection;
use crate::hit::set_agent_stack;
use crate::inside::{block_signals, remove, Placed, RUNNING, STACK};
use crate::shm::Shm;
use crate::wire::{receive, send, Message};

/// A value behind a spin lock that `fork` can hold across.
pub(crate) struct Gate<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `with`, by one thread at a time.
unsafe impl<T: Send> Sync for Gate<T> {}

struct Held<'a>(&'a AtomicBool);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.store(false, Release);
    }
}

impl<T> Gate<T> {
    pub(crate) const fn new(value: T) -> Self {
        Gate { held: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Take the gate if no one holds it: whether this did.
    fn try_acquire(&self) -> bool {
        !self.held.swap(true, Acquire)
    }

    fn acquire(&self) {
        while self.held.swap(true, Acquire) {
            std::thread::yield_now();
        }
    }

    /// Run `f` on the value, alone.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.acquire();
        let _held = Held(&self.held);
        // SAFETY: the gate is held: no other thread reaches the value until it is let go.
        f(unsafe { &mut *self.value.get() })
    }
}

/// A session's state, as a forked child needs it.
pub(crate) struct Live {
    /// The tracer's socket.
    pub(crate) name: Vec<u8>,
    /// The probes placed.
    pub(crate) placed: Vec<Placed>,
    /// The shared memory.
    pub(crate) shm: Arc<Shm>,
    /// Probes on a library not loaded (now), placed when it is.
    pub(crate) waiting: Vec<crate::wire::PlaceProbe>,
    /// Probes placed when their library was loaded, removed when it is unloaded.
    pub(crate) followed: Vec<crate::wire::PlaceProbe>,
    /// The probes that keep `SIGTRAP` open in threads that block every signal and in signal
    /// handlers (`dprobe_inproc::keep_traps_open`), removed after every other probe that may
    /// trap.
    pub(crate) traps_open: Option<dprobe_inproc::TrapsOpen>,
    /// The probes that keep the ids in events right in children that share the program's
    /// memory (`dprobe_inproc::watch_lent_threads`), removed with the others.
    pub(crate) lent_threads: Option<dprobe_inproc::LentThreads>,
    /// The probes that hold `posix_spawn` off while code changes
    /// (`dprobe_inproc::hold_spawns_while_patching`), removed last.
    pub(crate) spawn_hold: Option<dprobe_inproc::SpawnHold>,
    /// The probes that ask dprobe before the program's `exec` (`exec_gate.rs`), if asked for.
    pub(crate) exec_gate: crate::exec_gate::GateProbes,
    /// The probes that give the agent's thread a caller's capabilities before an id change
    /// (`credentials.rs`).
    pub(crate) credentials: Option<crate::credentials::KeptAlike>,
    /// Entry probes on `int3` disabled while the tracer places the others (`held_off.rs`),
    /// by index.
    pub(crate) held_off: Vec<usize>,
    /// Semaphores of probes placed before the trace's window opened, raised when it opens:
    /// the probe's index, its name, the semaphore.
    pub(crate) to_raise: Vec<(usize, String, dprobe_sym::Semaphore)>,
    /// The probes that have the agent leave a program entering a new user namespace
    /// (`user_namespace.rs`).
    pub(crate) user_namespaces: Option<crate::user_namespace::LeavesForUserNamespaces>,
}

impl Live {
    /// A session with the tracer at socket `name`, sharing `shm`, before any probe.
    pub(crate) fn new(name: &[u8], shm: Arc<Shm>) -> Live {
        Live {
            name: name.to_vec(),
            placed: Vec::new(),
            shm,
            waiting: Vec::new(),
            followed: Vec::new(),
            traps_open: None,
            lent_threads: None,
            spawn_hold: None,
            exec_gate: Default::default(),
            credentials: None,
            held_off: Vec::new(),
            to_raise: Vec::new(),
            user_namespaces: None,
        }
    }
}

/// Whether forked children keep the probes (dprobe follows them).
pub(crate) static FOLLOW_CHILDREN: AtomicBool = AtomicBool::new(false);

/// The session running in this process, if any.
pub(crate) static LIVE: Gate<Option<Live>> = Gate::new(None);

/// End the session in this process: every probe removed (the figures the engine keeps copied
/// into the shared memory first when `figures`: the parent's alone, a child's would overwrite
/// them).
pub(crate) fn end_session(figures: bool) {
    LIVE.with(|live| {
        if let Some(mut l) = live.take() {
            // Calls that begin from now are not counted, whichever probe they meet first.
            crate::trace_window::close();
            // A thread waiting for dprobe's answer before its `exec` goes on first.
            crate::exec_gate::close(&l.shm, std::mem::take(&mut l.exec_gate));
            // The probes first: a thread the loader holds at its notification (about to unmap
            // a library) is let go only once none is left in code it may unmap.
            remove(&mut l.placed, figures.then_some(&*l.shm));
            crate::follow::stop();
            drop(l.credentials.take());
            drop(l.user_namespaces.take());
            // Every probe that can trap goes while `SIGTRAP` is still kept open: removing a
            // jump whose five bytes are not in one aligned word puts an `int3` back for a
            // moment (`dprobe_inproc`'s protocol), and a thread that blocks every signal
            // around its call (a shell around `vfork`) is killed at that `int3` once the
            // masks are its own again. So the probes on `vfork` and `posix_spawn` go first.
            drop(l.lent_threads.take());
            drop(l.traps_open.take());
            drop(l.spawn_hold.take());
            // No descriptor of the agent's stays in the program (the next session opens its own).
            dprobe_inproc::close_mem_file();
        }
    });
}

/// Hold the gate across every `fork` from now on (once; after the engine's own fork handlers
/// are registered, by `dprobe_inproc::mark_own_thread`, so that they run first in the child).
pub(crate) fn follow_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers C-ABI functions that take and let go of the gate and start a thread.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child));
    });
}

extern "C" fn before_fork() {
    // The agent's thread may hold the gate while a safepoint of its waits for this thread to
    // answer (a jump going in): a thread that blocks every signal around its `fork`, as daemons
    // do, waits with the safepoint's signal open, or both would wait 5 s and the jump stay on
    // `int3` (the agent's own jump that keeps `SIGTRAP` open among them: the program was then
    // killed at its next `int3` with every signal blocked). Opened again at each look (the
    // signal in use may change: the first safepoint puts dprobe's handler on `SIGURG`), and
    // closed before the gate is taken.
    while !LIVE.try_acquire() {
        let _open = dprobe_inproc::open_safepoint_signal();
        std::thread::yield_now();
    }
}

extern "C" fn after_fork_in_parent() {
    LIVE.held.store(false, Release);
}

extern "C" fn after_fork_in_child() {
    LIVE.held.store(false, Release);
    // Made on the child's thread, before `fork` returns there: the agent's work, not the
    // child's (the thread it starts, the probes it removes allocate and free), counts nothing.
    let _own = dprobe_inproc::own_work();
    // Not followed either where the child's thread runs under a seccomp filter the agent's
    // thread did not (`seccomp.rs`): its agent thread would inherit it.
    if !FOLLOW_CHILDREN.load(Acquire) || crate::seccomp::forked_under_a_filter() {
        LIVE.with(|live| live.as_ref().map(|l| l.shm.child_untraced()));
        end_session(false);
        RUNNING.store(false, Release);
        return;
    }
    if LIVE.with(|live| live.is_some()) {
        // The child's probes are those placed before the fork, all of them live: it counts
        // from its start, even when the parent forked it before every probe was placed (no
        // word that they are comes to the child).
        crate::trace_window::open();
        // Likewise the semaphores of the probes placed before it (what could not be raised
        // was said to nobody: the child's own summary is the parent's).
        LIVE.with(|live| live.as_mut().map(crate::inside::raise_deferred));
        crate::credentials::child_agent_starting();
        let spawned = crate::agent_thread::start(STACK, child_session);
        match spawned {
            Ok(()) => crate::credentials::await_child_agent(),
            Err(_) => end_session(false),
        }
    }
}

/// The child's agent thread.
fn child_session() {
    // Before anything that may pass a probe (the C library's allocator): the child's
    // counts are the child's calls alone.
    dprobe_inproc::mark_own_thread();
    // First: the child's thread waits for this until `fork` returns there (its calls into a
    // new user namespace are this thread's to serve from then on).
    crate::user_namespace::serve_here();
    crate::credentials::serve_here();
    // As the parent's agent thread (`inside.rs`): its own descriptor table, to the end.
    let _table = dprobe_inproc::own_files::PrivateTable::take();
    if set_agent_stack().is_ok() {
        block_signals();
        if let Some(name) = LIVE.with(|live| live.as_ref().map(|l| l.name.clone())) {
            let _ = announce_and_wait(&name);
        }
    }
    // dprobe asked, went away, or could not be reached: the child's probes go.
    end_session(false);
    RUNNING.store(false, Release);
}

fn announce_and_wait(name: &[u8]) -> io::Result<()> {
    let shm = LIVE.with(|live| live.as_ref().map(|l| l.shm.clone()));
    let mut sock = Connection::to(name)?;
    send(&mut sock, &Message::Hello(std::process::id()))?;
    let mut looked = std::time::Instant::now();
    loop {
        if sock.lost() {
            return Err(Connection::lost_error());
        }
        // The child's own threads have all ended: the agent's goes too (`program_gone.rs`).
        if looked.elapsed() >= std::time::Duration::from_millis(100) {
            looked = std::time::Instant::now();
            if crate::program_gone::program_gone() {
                return Ok(());
            }
        }
        if let Some(shm) = &shm {
            // The doorbell is the parent's too: a ring may be for it.
            let waiting = || crate::credentials::pending().is_some() || crate::user_namespace::asked();
            let ready = crate::inside::readable(&sock, shm, 20, waiting)?;
            if let Some(asked) = crate::credentials::pending() {
                crate::credentials::answer(asked);
            }
            // (The shared memory is the program's: nothing is said there. The program this
            // child executes is not followed.)
            if crate::user_namespace::asked() && crate::user_namespace::leaves().is_some() {
                shm.child_untraced();
                return Ok(());
            }
            if !ready {
                continue;
            }
        }
        match receive(&mut sock)? {
            Some(Message::Stop) => {
                end_session(false);
                return send(&mut sock, &Message::Stopped);
            }
            Some(_) => {}
            None => {
                // dprobe went away: a thread of this process or another waiting for its
                // answer before an `exec` (this one's, held in its probe until the probes
                // can go) goes on now.
                if let Some(shm) = &shm {
                    crate::exec_gate::close_for_everyone(shm);
                }
                return Ok(());
            }
        }
    }
}
