//! The safepoint of a jump over several instructions: before its jump goes live, no thread
//! may be stopped strictly inside the replaced instructions (the *window*) or inside the
//! site's out-of-line slot, whose jump back lands in the window.
//!
//! # The protocol
//!
//! The registrar (holding the engine's lock) publishes a [`Plan`] (for each site: its window,
//! where each instruction's copy is in the detour, its slots), then sends every other thread
//! of the process [`safepoint_signal`] with `rt_tgsigqueueinfo`, carrying a token that tells
//! it from the program's own uses of the signal (those are passed on to the program's
//! handler). Each thread, in [`on_safepoint`], looks at where it was interrupted and moves
//! itself to the equivalent place in the detour's copy when that is inside a window or at an
//! instruction boundary of a slot (the kernel moves a kprobe's trapped thread into an
//! optprobe's copy the same way). The interrupted place may itself be a signal handler of the
//! program, below which another signal frame holds a place inside the window (a thread
//! "parked" there): the handler therefore also scans the stack above its own frame for the
//! signal frames the kernel pushed (recognized by the C library's `sa_restorer`, which its own
//! frame starts with) and moves the program counter saved in those too. Then it acknowledges.
//!
//! The registrar waits until every thread acknowledged or is gone; only then does it write the
//! jump. A thread cannot enter the window afterwards: the first byte is an `int3` until the
//! jump replaces it, and the trap path sends a hit to the detour's copy (`Engine::route`) once
//! the detour exists; dprobe's own `SIGTRAP` and fault handlers block the safepoint signal, so
//! a thread there is examined only after it has returned to where that handler sent it. (A
//! `SIGTRAP` frame the scan may still meet, under a program's own handler that dprobe's
//! calls, says where its trap came from, not where the thread goes: inside the plan it is
//! busy, never moved. So is a frame one past a post-step slot's `int3`, whose handler will send
//! the thread into the window.)
//!
//! A thread that does not acknowledge within [`PATIENCE`] (it blocks the signal, or a
//! handler of the program blocks it) leaves the site on `int3`: the jump is never written
//! while the proof is missing. One that blocked it through a whole earlier safepoint and still
//! does is waited for [`DEAF_GRACE`] only, and not signalled until it unblocks; a round whose
//! signal's handler the program replaced gives up at once. A thread found strictly inside a
//! slot's far prologue cannot be moved; the registrar tries again a few times, then also gives
//! up.
//!
//! Threads blocked in a system call are not signalled: a signal would make the few calls
//! never restarted after a handler (`poll`, `nanosleep`, ...) return `EINTR` to the program.
//! The registrar reads where such a thread would resume instead (`blocked.rs` says why that
//! is enough), and leaves the site on `int3` if that is inside a window. A thread that went to
//! sleep after it was found running has the wait its signal ended resumed by the handler, for
//! the common waits (`resumed_waits.rs`).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dprobe_arch::{Addr, NotOptimized};

use crate::blocked;
use crate::context::SignalContext;
use crate::signal_frame::{self, RIP_AT, RSP_AT, SIGINFO_AT};
use crate::signals::{self, chain, Redeliver};
use crate::stack_end::readable_end;
use crate::sys;

/// The signal a safepoint sends each thread now: `SIGURG`, whose default action is to ignore
/// it (Go's runtime preempts its threads with it for the same reason). A thread found running
/// may be inside `execve`, still loading the new program: the signal stays pending across the
/// `exec`, where the new program has the default action. A real-time signal's default would
/// kill the new program; `SIGURG`'s does nothing.
///
/// But a standard signal does not queue: one sent while another is pending for the thread
/// merges into it. A program that ignores `SIGURG` or leaves it to its default loses nothing by
/// a merge; one that handles it could miss one of its own. So dprobe's handler goes on `SIGURG`
/// only where the program's action is the default or "ignore" (again where the program puts
/// such an action back), and `SIGURG` is the safepoint's signal where dprobe's handler is
/// there; elsewhere (the program's handler there, or before the first safepoint) it is the
/// last real-time signal, which queues (and whose pending copy would kill a new program).
pub fn safepoint_signal() -> libc::c_int {
    if signals::handler_in_place_at(libc::SIGURG, handler()) {
        libc::SIGURG
    } else {
        libc::SIGRTMAX()
    }
}

/// Both signals a safepoint may send (see [`safepoint_signal`]): dprobe's handlers block
/// both, and its handler of each is the safepoint's.
pub(crate) fn safepoint_signals() -> [libc::c_int; 2] {
    [libc::SIGURG, libc::SIGRTMAX()]
}

/// While it lives, the calling thread takes the safepoint signal even where it blocks it: for
/// a thread that waits for something another thread holds while a safepoint (made by that
/// thread) waits for this one's answer. A thread that blocks every signal around its `fork`
/// and waits there for the agent's session, held while a jump goes in, never answered: both
/// waited [`PATIENCE`], and the jump stayed on `int3`. Only `SIGURG`, where it is the signal
/// in use (dprobe's handler over the program's default or "ignore"): a `SIGURG` of the
/// program's that comes meanwhile is ignored a little early, as it would have been (one a
/// `signalfd` or `sigwaitinfo` of the program's was to take is lost). Where the program
/// handles `SIGURG` itself the real-time signal is in use, and stays blocked: opened, a signal
/// of the program's would meet its handler, or its default action that ends the process,
/// while the program blocked it. Async-signal-safe.
pub fn open_safepoint_signal() -> SafepointSignalOpen {
    let signal = safepoint_signal();
    let before = sys::signal_mask();
    let opened = signal == libc::SIGURG && before >> (signal - 1) & 1 == 1;
    if opened {
        sys::set_signal_mask(before & !(1 << (signal - 1)));
    }
    SafepointSignalOpen { before: opened.then_some(before) }
}

/// The thread's mask as it was before [`open_safepoint_signal`] opened the signal, put back
/// when dropped (`None`: nothing was opened).
#[must_use = "the signal is blocked again when this is dropped"]
pub struct SafepointSignalOpen {
    before: Option<u64>,
}

impl Drop for SafepointSignalOpen {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            sys::set_signal_mask(before);
        }
    }
}

/// The safepoint's handler, as the kernel has it.
fn handler() -> usize {
    on_safepoint as *const () as usize
}

/// How long a safepoint waits for a thread's acknowledgement.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// The threads that let a whole [`PATIENCE`] pass with the safepoint signal blocked. Such a
/// thread usually blocks it for good (a program's thread that blocks every signal it can):
/// a later safepoint that finds it still blocking the signal gives up after [`DEAF_GRACE`]
/// rather than after the whole patience again (the agent's start places several probes, a
/// safepoint each: 40 s instead of 5). A thread that answers a safepoint leaves the list.
static DEAF: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// How long a thread in [`DEAF`] is waited for.
const DEAF_GRACE: Duration = Duration::from_millis(20);

/// Rounds tried when a thread is found in a place it cannot be moved from.
const ROUNDS: usize = 20;
/// How long a round may spend looking again at the threads it is about to signal (see
/// `blocked::examine_before_signal`): about 0.1 ms for each that keeps running.
const LOOKS_BEFORE_SIGNALS: Duration = Duration::from_millis(1);

/// How far above the interrupted stack pointer signal frames are looked for.
const SCAN_BYTES: u64 = 256 * 1024;

/// The largest window: five instructions of one byte each.
pub(crate) const MAX_WINDOW: usize = 5;

/// One site about to jump: where its window is, and where each instruction of it runs in the
/// detour.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// The window's first byte.
    pub start: Addr,
    /// After its last instruction.
    pub end: Addr,
    /// `(original, copy)` for each instruction, `len` of them.
    pub map: [(Addr, Addr); MAX_WINDOW],
    /// How many instructions.
    pub len: usize,
    /// Where the copy continues after its first instruction: a thread that ran that one in a
    /// slot resumes there (the detour's post block, if it has one, runs the post-handlers).
    pub after_first: Addr,
}

impl Window {
    /// The copy of the instruction at `original`, if one of the window's starts there.
    pub(crate) fn copy_of(&self, original: Addr) -> Option<Addr> {
        self.map[..self.len].iter().find(|(o, _)| *o == original).map(|(_, c)| *c)
    }
}

/// An out-of-line slot of a site about to jump.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Its code, `[start, end)`.
    pub start: Addr,
    pub end: Addr,
    /// Where its relocated instruction ends (before its jump back or `int3`), when nothing of
    /// the slot is left to undo there (not a far slot).
    pub after_insn: Option<Addr>,
    /// The window it belongs to (index in the plan's windows).
    pub window: usize,
    /// Whether it ends with an `int3` (a post-step slot: its trap sends the thread on to the
    /// window's next instruction, after the post-handlers).
    pub traps: bool,
}

/// Everything a safepoint moves threads out of.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub windows: Vec<Window>,
    pub slots: Vec<Slot>,
    /// The private writable mappings `[start, end)`, sorted (filled in by [`run`]): a thread's
    /// stack is one of them, and its handler reads it up to the mapping's end, no further.
    pub stacks: Vec<(u64, u64)>,
    /// Detours of removed probes `[start, end)`, sorted, whose memory is to be reused: a
    /// thread is busy while its program counter is inside one, or while its stack holds an
    /// address inside one (a return address of a hit in progress, or a signal frame's saved
    /// program counter). Nothing is moved out of them.
    pub retired: Vec<(u64, u64)>,
    /// How long a thread may take to acknowledge; [`PATIENCE`] when not set. Reclaiming
    /// detours waits less: it can try again at the next registration.
    pub patience: Option<Duration>,
}

/// Where a thread stopped at `rip` must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nowhere: it is outside every window and slot.
    Stay,
    /// To the detour's copy.
    Move(u64),
    /// It cannot be moved from there now.
    Busy,
}

impl Plan {
    /// Whether a thread at `rip` would have to be moved (or cannot be).
    pub(crate) fn touches(&self, rip: u64) -> bool {
        self.verdict(rip) != Verdict::Stay
    }

    /// [`Plan::touches`] for a program counter saved in a signal frame.
    pub(crate) fn frame_touches(&self, rip: u64) -> bool {
        self.frame_verdict(rip) != Verdict::Stay
    }

    /// Where a thread whose signal frame saved `rip` must go. A frame saved just after a
    /// post-step slot's final `int3` (one past the slot) is that trap's, whose handler has
    /// not sent the thread on yet: it will send it into the window (after the instruction the
    /// slot ran), so it is busy.
    fn frame_verdict(&self, rip: u64) -> Verdict {
        match self.verdict(rip) {
            Verdict::Stay if self.slots.iter().any(|s| s.traps && rip == s.end.0) => Verdict::Busy,
            verdict => verdict,
        }
    }

    /// Where a thread whose `SIGTRAP` frame saved `rip` must go. Its handler may not have
    /// sent the thread on yet: the place saved (just past an `int3`) then says where the trap
    /// came from, not where the thread goes, and one past a window's first instruction of one
    /// byte looks like a thread that ran it. So a place inside the plan is busy, never moved.
    fn trap_frame_verdict(&self, rip: u64) -> Verdict {
        match self.frame_verdict(rip) {
            Verdict::Stay => Verdict::Stay,
            _ => Verdict::Busy,
        }
    }

    /// The listed stack mapping holding `sp`.
    pub(crate) fn stack_of(&self, sp: u64) -> Option<(u64, u64)> {
        let i = self.stacks.partition_point(|m| m.0 <= sp);
        i.checked_sub(1).map(|i| self.stacks[i]).filter(|m| sp < m.1)
    }

    /// Whether `value` is an address inside a retired detour.
    pub(crate) fn in_retired(&self, value: u64) -> bool {
        let i = self.retired.partition_point(|r| r.0 <= value);
        i.checked_sub(1).is_some_and(|i| value < self.retired[i].1)
    }

    fn verdict(&self, rip: u64) -> Verdict {
        if self.in_retired(rip) {
            return Verdict::Busy;
        }
        for w in &self.windows {
            if rip > w.start.0 && rip < w.end.0 {
                return w.copy_of(Addr(rip)).map_or(Verdict::Busy, |c| Verdict::Move(c.0));
            }
        }
        for s in &self.slots {
            if rip >= s.start.0 && rip < s.end.0 {
                let w = &self.windows[s.window];
                return if rip == s.start.0 {
                    Verdict::Move(w.map[0].1 .0)
                } else if Some(Addr(rip)) == s.after_insn {
                    // Its jump back lands on the window's second instruction (or after it).
                    if w.len > 1 {
                        Verdict::Move(w.after_first.0)
                    } else {
                        Verdict::Stay
                    }
                } else {
                    Verdict::Busy
                };
            }
        }
        Verdict::Stay
    }
}

/// The round in progress, read by the signal handler.
struct Round {
    plan: *const Plan,
    /// The threads signalled, and whether each acknowledged.
    tids: *const [(libc::pid_t, AtomicBool)],
}

static ROUND: AtomicPtr<Round> = AtomicPtr::new(std::ptr::null_mut());
/// The number of the round in progress, carried in its signals' tokens (any round's signal
/// answers the current one: see [`answer`]).
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Handlers between reading [`ROUND`] and being done with it.
static READERS: AtomicUsize = AtomicUsize::new(0);
/// Threads of this round found where they cannot be moved from.
static BUSY: AtomicUsize = AtomicUsize::new(0);
/// Program counters moved, over all rounds (tests read it).
static MOVED: AtomicU64 = AtomicU64::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The token's high bits: "dprobe's safepoint".
const TOKEN: u64 = 0xd9_0be0_0000_0000;

/// Program counters moved into detours by safepoints so far.
pub fn moved() -> u64 {
    MOVED.load(Relaxed)
}

/// Make sure no thread is inside `plan`'s windows or slots, moving those that are.
pub(crate) fn run(plan: &mut Plan) -> Result<(), NotOptimized> {
    let no = |reason: String| NotOptimized::NoSafepoint { reason };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Read and parsed without the C library's `open`, `read` and allocator (one buffer): its
    // functions may be probed, on `int3` (the batch being placed), and each call would trap.
    let mut text = Vec::with_capacity(256 << 10);
    sys::read_own_maps(&mut text).map_err(|e| no(format!("reading the memory map: {e}")))?;
    let text = std::str::from_utf8(&text).map_err(|e| no(format!("reading the memory map: {e}")))?;
    // Stacks of threads created after this are not listed; those threads never ran inside a
    // window (the trap path already sends hits to the detour), so nothing is lost. Such a
    // thread's stack may lie where a larger mapping was listed: the handler reads no further
    // than the mapping holding its stack now (`stack_end.rs`).
    plan.stacks.clear();
    plan.stacks.extend(dprobe_sym::stack_ranges(text));
    plan.stacks.sort_unstable();
    install().map_err(|e| no(format!("installing the signal handler: {e}")))?;
    for _ in 0..ROUNDS {
        // Chosen again each round: the program may have put its own handler of `SIGURG` in
        // place of dprobe's meanwhile (the round it did so in gives up at once).
        let signal = safepoint_signal();
        if !signals::handler_in_place_at(signal, handler()) {
            // The real-time one: the program put a handler of its own in its place.
            return Err(no(format!("the program replaced dprobe's handler of its safepoint signal ({signal})")));
        }
        let restorer = blocked::restorer(signal);
        if round(&*plan, signal, restorer)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(no("a thread stayed inside dprobe's out-of-line copy of the instruction".into()))
}

/// One round: signal every other thread not blocked in a system call with `signal`, and
/// wait; whether none was busy. A thread that blocked the signal through a whole earlier
/// safepoint and still does is signalled only once it no longer does: a program's thread
/// that takes the signal with `sigwaitinfo` or a `signalfd` would take each of dprobe's as
/// its own. (Any other thread that blocks it is signalled at once: most block it for a moment,
/// in one of dprobe's handlers, and take it as they return.)
fn round(plan: &Plan, signal: libc::c_int, restorer: u64) -> Result<bool, NotOptimized> {
    let no = |reason: String| NotOptimized::NoSafepoint { reason };
    let own = sys::own_tid();
    let mut tids: Vec<(libc::pid_t, AtomicBool)> = Vec::new();
    for tid in std::fs::read_dir("/proc/self/task")
        .map_err(|e| no(format!("listing the threads: {e}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|t| *t != own)
    {
        if blocked::examine(tid, plan, restorer)? == blocked::Decision::Signal {
            tids.push((tid, AtomicBool::new(false)));
        }
    }
    let state = Round { plan, tids: tids.as_slice() };
    let generation = GENERATION.fetch_add(1, SeqCst) + 1;
    BUSY.store(0, SeqCst);
    ROUND.store(&state as *const Round as *mut Round, SeqCst);
    let mut outcome = Ok(());
    // Threads that keep running are looked at again for so long per round, then signalled.
    let patient_until = Instant::now() + LOOKS_BEFORE_SIGNALS;
    // Those left alone after all: counted as answered, without having heard the signal.
    let mut left_alone = Vec::new();
    // Those not signalled yet: known to block the signal, and blocking it.
    let mut unsent = Vec::new();
    let mut deaf = DEAF.lock().unwrap_or_else(|e| e.into_inner());
    let send = |tid: libc::pid_t, acked: &AtomicBool| {
        if sys::queue_signal(tid, signal, TOKEN | generation).is_err() {
            // Gone already: it is in no window.
            acked.store(true, SeqCst);
        }
    };
    for (tid, acked) in &tids {
        let patient = Instant::now() < patient_until;
        if patient && blocked::examine_before_signal(*tid, plan, restorer) == blocked::Decision::LeaveAlone {
            // Asleep by now where it cannot be inside a window: a signal would only end its
            // sleep.
            acked.store(true, SeqCst);
            left_alone.push(*tid);
            continue;
        }
        if deaf.contains(tid) && blocks_signal(*tid, signal) {
            unsent.push(*tid);
        } else {
            send(*tid, acked);
        }
    }
    let started = Instant::now();
    let deadline = started + plan.patience.unwrap_or(PATIENCE);
    let mut pause = Duration::from_micros(20);
    let mut handler_replaced = false;
    while let Some((tid, _)) = tids.iter().find(|(t, acked)| !acked.load(SeqCst) && sys::thread_alive(*t)) {
        if !signals::handler_in_place_at(signal, handler()) {
            // The program installed its own action of the signal: the threads' answers will
            // not come. Another round, with the other signal where that was `SIGURG`.
            handler_replaced = true;
            break;
        }
        unsent.retain(|t| {
            let blocks = blocks_signal(*t, signal);
            if !blocks {
                tids.iter().filter(|(tid, _)| tid == t).for_each(|(tid, acked)| send(*tid, acked));
            }
            blocks
        });
        let known_deaf = started.elapsed() >= DEAF_GRACE && deaf.contains(tid) && blocks_signal(*tid, signal);
        if Instant::now() > deadline || known_deaf {
            let again = if known_deaf { "; it blocked it through an earlier safepoint too" } else { "" };
            if !known_deaf && blocks_signal(*tid, signal) {
                deaf.push(*tid);
            }
            let report = thread_report(*tid, signal);
            outcome = Err(no(format!("thread {tid} did not take dprobe's safepoint signal ({report}){again}")));
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
    // A thread that answered hears the signal again (one left alone did not say so).
    let answered = |t: &libc::pid_t| tids.iter().any(|(tid, acked)| tid == t && acked.load(SeqCst));
    deaf.retain(|t| !answered(t) || left_alone.contains(t));
    drop(deaf);
    ROUND.store(std::ptr::null_mut(), SeqCst);
    while READERS.load(SeqCst) != 0 {
        std::thread::yield_now();
    }
    outcome.map(|()| !handler_replaced && BUSY.load(SeqCst) == 0)
}

/// Whether thread `tid` blocks `signal` now (`false` when that cannot be read).
fn blocks_signal(tid: libc::pid_t, signal: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    signal_blocked(&status, signal) == Some(true)
}

/// Whether the thread whose `/proc` status is `status` blocks `signal`, if it says.
fn signal_blocked(status: &str, signal: libc::c_int) -> Option<bool> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?.trim();
    u64::from_str_radix(mask, 16).ok().map(|m| m >> (signal - 1) & 1 == 1)
}

/// What the kernel says of a thread that did not answer: its name, state and whether it
/// blocks the safepoint's `signal`.
fn thread_report(tid: libc::pid_t, signal: libc::c_int) -> String {
    let read = |what: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/{what}")).unwrap_or_default();
    let status = read("status");
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_owned();
    let blocked = match signal_blocked(&status, signal) {
        Some(true) => "blocked",
        Some(false) => "not blocked",
        None => "?",
    };
    format!("`{}`, state {}, the signal {blocked}, pending {}", read("comm").trim(), field("State:"), field("SigPnd:"))
}

/// Install the safepoint signals' handler: on the real-time signal once, on `SIGURG` where
/// the program leaves it to its default or ignores it (see [`safepoint_signal`]).
pub(crate) fn install() -> std::io::Result<()> {
    signals::install_unwound(libc::SIGRTMAX(), on_safepoint)?;
    signals::install_over_default(libc::SIGURG, on_safepoint)
}

/// A signal that only resumes what it interrupted, as one from a round that is over does
/// (tests).
#[cfg(test)]
pub(crate) fn stale_signal(tid: libc::pid_t) -> std::io::Result<()> {
    sys::queue_signal(tid, safepoint_signal(), TOKEN | 0xffff_ffff)
}

/// The safepoint signal: dprobe's (move this thread out of the windows), or the program's.
///
/// A forced unwind may cross it: the C library cancels a thread (`pthread_cancel`) from its
/// own handler, which may come while this one resumes a wait (`resumed_waits.rs`), by
/// unwinding the thread's stack through it; nothing here is left to drop by then.
extern "C-unwind" fn on_safepoint(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SI_QUEUE signals si_pid sits at offset 16
    // and si_value at offset 24 of the x86-64 layout.
    let (code, pid, value) = unsafe {
        let p = info as *const u8;
        ((*info).si_code, p.add(16).cast::<i32>().read_unaligned(), p.add(24).cast::<u64>().read_unaligned())
    };
    let ours = code == libc::SI_QUEUE && pid == sys::own_pid() && value & !0xffff_ffff == TOKEN & !0xffff_ffff;
    // No handler of the program's runs before the wait is resumed (it would have expected
    // the wait to end with `EINTR`): its signals wait until the resumed call lets them in.
    // Nor does a thread cancellation (the C library's signal 32) unwind through the work of
    // the safepoint, which holds its count of readers meanwhile.
    const CANCEL: u64 = 1 << (32 - 1);
    let handler_mask = sys::block_signals(sys::asynchronous_signals() | CANCEL);
    // The program's own signal answers a round too: dprobe's may have merged into it.
    answer(uc);
    // A wait the program's signal ended is the program's to see, unless the program would
    // not have seen the signal at all (ignored).
    if ours || signals::program_ignores(sig) {
        // SAFETY: the kernel passes this handler's interrupted context as `uc`.
        crate::resumed_waits::resume(&mut unsafe { SignalContext::new(uc) });
    }
    sys::set_signal_mask(handler_mask);
    if !ours {
        // SAFETY: dprobe's handler for `sig`, kernel arguments.
        unsafe { chain(sig, info, uc, Redeliver::Raise) };
        return;
    }
    // SAFETY: `uc` is this handler's context, as above.
    unsafe { crate::x87_frame::leave_initial_x87_unused(uc) };
}

/// The safepoint's work in the thread a safepoint signal reached, whose interrupted context is
/// `uc`: moved out of the plan's windows, and the answer given, when a round is on. Whatever
/// round the signal was sent for: a signal taken now was taken after the plan was published,
/// and a standard signal sent for this round while an older one was pending merged into it.
fn answer(uc: *mut libc::c_void) {
    let _own_frame = crate::interrupted::OwnFrame::enter(crate::thread_state::existing(), uc);
    READERS.fetch_add(1, SeqCst);
    let round = ROUND.load(SeqCst);
    if !round.is_null() {
        // SAFETY: the registrar keeps the round alive until READERS is back to zero.
        let round = unsafe { &*round };
        // SAFETY: as above.
        let (plan, tids) = unsafe { (&*round.plan, &*round.tids) };
        // SAFETY: the kernel passes this handler's interrupted context as `uc`.
        let mut ctx = unsafe { SignalContext::new(uc) };
        let mut busy = false;
        match plan.verdict(ctx.rip()) {
            Verdict::Stay => {}
            Verdict::Move(to) => {
                ctx.set_rip(to);
                MOVED.fetch_add(1, Relaxed);
            }
            Verdict::Busy => busy = true,
        }
        // SAFETY: `uc` is the context the kernel passed, inside its signal frame.
        busy |= unsafe { move_outer_frames(plan, uc, ctx.rsp()) };
        if !plan.retired.is_empty() {
            // SAFETY: as above.
            busy |= unsafe { stack_holds_retired(plan, uc, ctx.rsp()) };
        }
        if busy {
            BUSY.fetch_add(1, SeqCst);
        }
        let own = sys::own_tid();
        if let Some((_, acked)) = tids.iter().find(|(t, _)| *t == own) {
            acked.store(true, SeqCst);
        }
    }
    READERS.fetch_sub(1, SeqCst);
}

/// Whether this thread's stack, from the interrupted stack pointer `rsp` to the stack's end,
/// holds an address inside a retired detour; the stacks that signal frames the kernel put on
/// an alternate stack interrupted are read too (a handler on the alternate stack interrupted
/// code on the thread's own; `StackChain::follow_frame`). A stack that cannot be bounded
/// counts as holding one: the detour then waits.
///
/// # Safety
/// `uc` must be the context the kernel passed to the running handler.
unsafe fn stack_holds_retired(plan: &Plan, uc: *mut libc::c_void, rsp: u64) -> bool {
    // SAFETY: per the contract.
    let mut stacks = unsafe { StackChain::new(plan, uc, rsp) };
    let word = |at: u64| {
        // SAFETY: `at` lies between a stack pointer of this thread and the end `StackChain`
        // found for its stack: mapped, and unmapped by nobody while the thread runs on it.
        unsafe { std::ptr::read_volatile(at as *const u64) }
    };
    while let Some(next) = stacks.next() {
        let Some(end) = next.end else { return true };
        let mut at = next.sp & !7;
        while at + 8 <= end {
            let value = word(at);
            if plan.in_retired(value) {
                return true;
            }
            if at % 16 == 8
                && at + signal_frame::READ_BYTES <= end
                && signal_frame::starts_at(at, stacks.restorer, word)
            {
                stacks.follow_frame(at, word, Unknown::Busy);
            }
            at += 8;
        }
    }
    stacks.overflowed
}

/// Look above the interrupted stack pointer `rsp` for signal frames pushed earlier on this
/// thread (its program counter is then in a signal handler, and the frame above holds where
/// the handler will return), and move the program counters saved there; the stack a frame the
/// kernel put on an alternate stack interrupted is looked at too (a handler on the alternate
/// stack that interrupted one on the thread's own, which interrupted the window;
/// `StackChain::follow_frame`). Whether one was found where it cannot be moved from.
///
/// Reads go no further than the end of each stack: the alternate signal stack for a stack
/// pointer on it, else the mapping that holds it (a thread stack has a guard page below it,
/// so its mapping is its own), as it is now and up to the thread's control block
/// (`stack_end.rs`), and at most [`SCAN_BYTES`] above the stack pointer.
///
/// # Safety
/// `uc` must be the context the kernel passed to the running handler.
unsafe fn move_outer_frames(plan: &Plan, uc: *mut libc::c_void, rsp: u64) -> bool {
    // SAFETY: per the contract.
    let mut stacks = unsafe { StackChain::new(plan, uc, rsp) };
    let word = |at: u64| {
        // SAFETY: as in `stack_holds_retired`.
        unsafe { std::ptr::read_volatile(at as *const u64) }
    };
    let mut busy = false;
    while let Some(next) = stacks.next() {
        // A stack that cannot be bounded is not read (nothing above it can be known).
        let Some(end) = next.end else { continue };
        let end = end.min(next.sp.saturating_add(SCAN_BYTES));
        // The kernel aligns a frame so that its start is 8 modulo 16.
        let mut frame = (next.sp & !15) + 8;
        while frame + signal_frame::READ_BYTES <= end {
            if signal_frame::starts_at(frame, stacks.restorer, word) {
                let rip = word(frame + RIP_AT);
                let trap = frame + SIGINFO_AT + 8 <= end && word(frame + SIGINFO_AT) as i32 == libc::SIGTRAP;
                match if trap { plan.trap_frame_verdict(rip) } else { plan.frame_verdict(rip) } {
                    Verdict::Stay => {}
                    Verdict::Move(to) => {
                        // SAFETY: as for `word`: this thread's own saved context, which the
                        // kernel reads back at that handler's `rt_sigreturn`.
                        unsafe { std::ptr::write_volatile((frame + RIP_AT) as *mut u64, to) };
                        MOVED.fetch_add(1, Relaxed);
                    }
                    Verdict::Busy => busy = true,
                }
                stacks.follow_frame(frame, word, Unknown::Skipped);
            }
            frame += 16;
        }
    }
    busy | stacks.overflowed
}

/// What [`StackChain::follow_frame`] makes of a saved stack pointer on no stack it knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// The scan cannot be complete: it says so ([`StackChain::overflowed`]).
    Busy,
    /// Left unread.
    Skipped,
}

/// The stacks of the running thread that its signal frames lead to, each read once: the one
/// it was interrupted on, then each other stack that a frame the kernel put on an alternate
/// stack saved a stack pointer on (a handler on the alternate stack that interrupted code on
/// the thread's own).
/// A stack is known by its range: the alternate stack's, or the listed mapping holding it.
/// Async-signal-safe: no allocation, a few at most.
struct StackChain<'a> {
    plan: &'a Plan,
    /// The C library's `sa_restorer`, which every frame of its handlers starts with.
    restorer: u64,
    alternate: Option<(u64, u64)>,
    /// The stack pointers to read from and their stacks, `count` of them, the first `next`
    /// read.
    sps: [(u64, Option<(u64, u64)>); 4],
    count: usize,
    next: usize,
    /// A frame led to a stack with no room left to note it, or to none known
    /// ([`Unknown::Busy`]).
    overflowed: bool,
}

/// A stack to read: from `sp` up to `end` (`None`: no end could be found).
struct NextStack {
    sp: u64,
    end: Option<u64>,
}

impl<'a> StackChain<'a> {
    /// # Safety
    /// `uc` must be the context the kernel passed to the running handler.
    unsafe fn new(plan: &'a Plan, uc: *mut libc::c_void, rsp: u64) -> Self {
        // SAFETY: per the contract, `uc` is this handler's frame, whose start (just below
        // `uc`) holds the return address the kernel pushed: the C library's `sa_restorer`.
        let (restorer, stack) = unsafe {
            let uc = uc.cast::<libc::ucontext_t>();
            (*(uc as *const u64).sub(1), (*uc).uc_stack)
        };
        let alternate = (stack.ss_flags & libc::SS_DISABLE == 0)
            .then(|| (stack.ss_sp as u64, stack.ss_sp as u64 + stack.ss_size as u64));
        let mut chain =
            StackChain { plan, restorer, alternate, sps: [(rsp, None); 4], count: 1, next: 0, overflowed: false };
        chain.sps[0].1 = chain.stack_of(rsp);
        chain
    }

    /// Whether `stack` is the thread's alternate signal stack.
    fn is_alternate(&self, stack: Option<(u64, u64)>) -> bool {
        stack.is_some() && stack == self.alternate
    }

    /// The stack holding `sp`: the alternate stack, or the listed mapping holding it.
    fn stack_of(&self, sp: u64) -> Option<(u64, u64)> {
        match self.alternate {
            Some((start, end)) if (start..end).contains(&sp) => self.alternate,
            _ => self.plan.stack_of(sp),
        }
    }

    /// The next stack to read.
    fn next(&mut self) -> Option<NextStack> {
        let (sp, stack) = *self.sps[..self.count].get(self.next)?;
        self.next += 1;
        let end = match stack {
            Some((_, end)) if self.is_alternate(stack) => Some(end),
            _ => readable_end(sp, stack),
        };
        Some(NextStack { sp, end })
    }

    /// A signal frame starts at `frame` (`word` reads it): where the kernel put it on an
    /// alternate stack, the stack it interrupted is read too, from the stack pointer it saved,
    /// if that is on another stack not noted yet. A frame on any other stack saved a place on
    /// that same stack (see `signal_frame::alternate_stack_holding`); one that says otherwise
    /// is a stale copy of an old frame, whose saved stack pointer may name another thread's
    /// stack, neither read nor written.
    fn follow_frame(&mut self, frame: u64, word: impl Fn(u64) -> u64, unknown: Unknown) {
        let Some((start, end)) = signal_frame::alternate_stack_holding(frame, &word) else { return };
        let saved_sp = word(frame + RSP_AT);
        if (start..end).contains(&saved_sp) {
            return;
        }
        let stack = self.stack_of(saved_sp);
        if stack.is_none() {
            self.overflowed |= unknown == Unknown::Busy;
            return;
        }
        if self.sps[..self.count].iter().any(|&(_, s)| s == stack) {
            return;
        }
        if self.count == self.sps.len() {
            self.overflowed = true;
            return;
        }
        self.sps[self.count] = (saved_sp, stack);
        self.count += 1;
    }
}

#[cfg(test)]
#[path = "safepoint_tests.rs"]
mod tests;
