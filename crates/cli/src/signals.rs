//! Ending a trace on request: Ctrl-C, `SIGTERM`, `SIGHUP`. A thread of dprobe's own receives
//! them and notes which came and how many; the engines look at the note between events and
//! at least every tenth of a second.
//!
//! dprobe traces from a holder process (see `dprobe_holder`): a stop signal reaches it directly
//! (from the terminal, or a `kill` of the whole process group) or through the front, and a
//! front that ended asks for a stop as a SIGINT sent to dprobe alone does.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dprobe_core::WaitForProgram;
use dprobe_holder::Front;
use nix::sys::signal::Signal;
use signal_hook::consts::SIGINT;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

/// The signal that asked dprobe to stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// How many stop signals came.
static COUNT: AtomicI32 = AtomicI32::new(0);
/// Whether the last one came from the terminal (Ctrl-C: the whole foreground process group,
/// a command dprobe started included, received it), not from a process's `kill`.
static FROM_TERMINAL: AtomicBool = AtomicBool::new(false);
/// The last stop signal that reached this process itself (0: none), set by the handler as it
/// comes (the thread that notes [`REQUESTED`] does so a moment later): one sent to the process
/// group (Ctrl-C, `kill -INT -PGID`), which reaches a command dprobe starts only once it is
/// forked.
static ARRIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
/// The stop requested when dprobe's front process ended (not a signal number).
pub const FRONT_ENDED: i32 = -1;
/// The front's pid, once it has ended.
static FRONT: AtomicI32 = AtomicI32::new(0);
/// Per signal and sender: how many came directly and how many through the front. One `kill`
/// of the process group reaches both processes: counted once, as the larger of the two.
static SENT: Mutex<Vec<(i32, i32, u32, u32)>> = Mutex::new(Vec::new());

/// Whether stop signal `signal` from process `sender` is a new request, not the other copy
/// of one already counted.
fn new_request(signal: i32, sender: i32, through_front: bool) -> bool {
    let mut sent = SENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = match sent.iter().position(|&(s, p, _, _)| (s, p) == (signal, sender)) {
        Some(i) => i,
        None => {
            sent.push((signal, sender, 0, 0));
            sent.len() - 1
        }
    };
    let (_, _, direct, forwarded) = &mut sent[i];
    if through_front {
        *forwarded += 1;
        *forwarded > *direct
    } else {
        *direct += 1;
        *direct > *forwarded
    }
}

fn request(signal: i32, from_terminal: bool) {
    FROM_TERMINAL.store(from_terminal, Ordering::Relaxed);
    REQUESTED.store(signal, Ordering::Relaxed);
    COUNT.fetch_add(1, Ordering::Relaxed);
}

/// The stop signals: a process's `kill` of dprobe's front is passed on to the holder.
pub const STOPS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// In the holder, a thread that takes the stop signals the front passes on, then its end.
pub fn watch_the_front(front: Front) -> io::Result<()> {
    std::thread::Builder::new().name("dprobe-front".into()).spawn(move || {
        let pid = front.pid();
        for passed in front {
            forwarded(passed.signal, passed.sender);
        }
        front_ended(pid);
    })?;
    Ok(())
}

/// A stop signal process `sender` sent dprobe's front, passed on.
fn forwarded(signal: i32, sender: i32) {
    if new_request(signal, sender, true) {
        request(signal, false);
    }
}

/// dprobe's front process `front` ended: stop (unless a stop was asked already), and let a
/// started command go on.
fn front_ended(front: i32) {
    FRONT.store(front, Ordering::Relaxed);
    let _ = REQUESTED.compare_exchange(0, FRONT_ENDED, Ordering::Relaxed, Ordering::Relaxed);
}

/// Catch the stop signals, except those dprobe was started with ignored, which stay ignored.
///
/// That is the classic convention: a shell without job control starts a background job with
/// SIGINT ignored (a Ctrl-C at the terminal is for the foreground job), and `nohup` starts its
/// command with SIGHUP ignored; a program that caught them anyway would end on a signal meant
/// for another. It also keeps a command dprobe starts as it would be untraced: a caught signal
/// is at its default in the command, an ignored one stays ignored there too.
pub fn install() -> io::Result<()> {
    let ignored = dprobe_holder::ignored_signals()?;
    let caught: Vec<i32> = STOPS.into_iter().filter(|&s| !ignored.contains(s)).map(|s| s as i32).collect();
    let arrived = ARRIVED.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for &signal in &caught {
        signal_hook::flag::register_usize(signal, arrived.clone(), signal as usize)?;
    }
    let mut signals = SignalsInfo::<WithOrigin>::new(caught)?;
    std::thread::Builder::new().name("dprobe-signals".into()).spawn(move || {
        for origin in signals.forever() {
            let from_terminal = origin.cause == Cause::Kernel;
            let sender = origin.process.map_or(0, |p| p.pid);
            if from_terminal || new_request(origin.signal, sender, false) {
                request(origin.signal, from_terminal);
            }
        }
    })?;
    Ok(())
}

/// The last stop signal that reached this process itself, if one did (see [`ARRIVED`]).
pub fn arrived() -> Option<i32> {
    ARRIVED.get().map(|a| a.load(Ordering::SeqCst) as i32).filter(|&s| s != 0)
}

/// The signal that asked dprobe to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// How long a command dprobe started is given to end by a stop signal it may have got as
/// dprobe did (see [`wait_for_the_command`]).
const A_MOMENT: Duration = Duration::from_secs(1);

/// How a command dprobe started is waited for once stop signal `signal` ended the trace.
///
/// - The terminal's (Ctrl-C, a hangup) reached the command too (the kernel sends it to the
///   whole foreground process group, which dprobe does not leave): it is waited for.
/// - One sent to dprobe's front alone did not: a `SIGTERM` or `SIGHUP` is passed on and the
///   command waited for; a `SIGINT` ends dprobe at once, the command going on.
/// - One that reached dprobe's holder directly came to the process group (`kill -INT -PGID`)
///   or to dprobe's processes by name (`pkill dprobe`), and the command may or may not have
///   got it: it is given a moment to end by it, after which a `SIGINT` lets it go on and a
///   `SIGTERM` or `SIGHUP` is passed on. A command that got it and ends by it in that moment
///   gets it once; one still shutting down after it gets it twice.
pub fn wait_for_the_command(signal: i32) -> Option<WaitForProgram> {
    let wait = |pass_on_after, patience| Some(WaitForProgram { signal, pass_on_after, patience });
    if signal == FRONT_ENDED {
        return None;
    }
    match (FROM_TERMINAL.load(Ordering::Relaxed), reached_dprobe_itself(signal), signal == SIGINT) {
        (true, _, _) => wait(None, None),
        (false, true, true) => wait(None, Some(A_MOMENT)),
        (false, true, false) => wait(Some(A_MOMENT), None),
        (false, false, true) => None,
        (false, false, false) => wait(Some(Duration::ZERO), None),
    }
}

/// Whether stop signal `signal` reached this process itself, not only through the front. One
/// `kill` of the process group queues it to every process of the group at once, but the front
/// may pass its copy on before this process has taken its own: it is then pending, or being
/// delivered (taken, its handler not yet run), which no one can see. That moment is waited
/// out, a few milliseconds at most on a busy machine.
pub fn reached_dprobe_itself(signal: i32) -> bool {
    let pending =
        || Signal::try_from(signal).is_ok_and(|s| dprobe_holder::pending_signals().is_ok_and(|p| p.contains(s)));
    let start = Instant::now();
    loop {
        if arrived() == Some(signal) || pending() {
            return true;
        }
        if start.elapsed() >= DELIVERY {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How long a signal queued to this process may take to run its handler (see
/// [`reached_dprobe_itself`]).
const DELIVERY: Duration = Duration::from_millis(50);

/// Whether a second stop signal came (the user insists: stop waiting).
pub fn insisted() -> bool {
    COUNT.load(Ordering::Relaxed) >= 2
}

/// How many stop signals came so far.
pub fn count() -> i32 {
    COUNT.load(Ordering::Relaxed)
}

/// `2` → `"SIGINT"`.
pub fn signal_name(signal: i32) -> String {
    if signal == FRONT_ENDED {
        return format!("the end of dprobe's process {}", FRONT.load(Ordering::Relaxed));
    }
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}
