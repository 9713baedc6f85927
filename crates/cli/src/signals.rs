//! Ending a trace on request: Ctrl-C, `SIGTERM`, `SIGHUP`. A thread of dprobe's own receives
//! them and notes which came and how many; the engines look at the note between events and
//! at least every tenth of a second.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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

/// Catch the stop signals, except those dprobe was started with ignored, which stay ignored.
///
/// That is the classic convention: a shell without job control starts a background job with
/// SIGINT ignored (a Ctrl-C at the terminal is for the foreground job), and `nohup` starts its
/// command with SIGHUP ignored; a program that caught them anyway would end on a signal meant
/// for another. It also keeps a command dprobe starts as it would be untraced: a caught signal
/// is at its default in the command, an ignored one stays ignored there too.
pub fn install() -> io::Result<()> {
    let ignored = ignored_signals()?;
    let caught = [SIGINT, SIGTERM, SIGHUP].into_iter().filter(|&s| ignored & (1 << (s - 1)) == 0);
    let mut signals = SignalsInfo::<WithOrigin>::new(caught.collect::<Vec<_>>())?;
    std::thread::Builder::new().name("dprobe-signals".into()).spawn(move || {
        for origin in signals.forever() {
            FROM_TERMINAL.store(origin.cause == Cause::Kernel, Ordering::Relaxed);
            REQUESTED.store(origin.signal, Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    Ok(())
}

/// The signals dprobe ignores now (bit `s - 1` for signal `s`), as the kernel shows them.
fn ignored_signals() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).map(str::trim);
    mask.and_then(|m| u64::from_str_radix(m, 16).ok())
        .ok_or_else(|| io::Error::other("no SigIgn line in /proc/self/status"))
}

/// The signal that asked dprobe to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Whether stop signal `signal` reached a command dprobe started as well: a SIGTERM or SIGHUP
/// is passed on to it; a SIGINT did when it came from the terminal (the kernel sends the
/// terminal's Ctrl-C to the whole foreground process group), not from a `kill` of dprobe.
pub fn reached_the_command(signal: i32) -> bool {
    signal != SIGINT || FROM_TERMINAL.load(Ordering::Relaxed)
}

/// Whether a second stop signal came (the user insists: stop waiting).
pub fn insisted() -> bool {
    COUNT.load(Ordering::Relaxed) >= 2
}

/// `2` → `"SIGINT"`.
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}
