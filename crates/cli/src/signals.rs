//! Ending a trace on request: Ctrl-C, `SIGTERM`, `SIGHUP`. A thread of dprobe's own receives
//! them and notes which came and how many; the engines look at the note between events and
//! at least every tenth of a second.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The signal that asked dprobe to stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// How many stop signals came.
static COUNT: AtomicI32 = AtomicI32::new(0);

/// Catch the stop signals.
pub fn install() -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("dprobe-signals".into()).spawn(move || {
        for signal in signals.forever() {
            REQUESTED.store(signal, Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    Ok(())
}

/// The signal that asked dprobe to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Whether a second stop signal came (the user insists: stop waiting).
pub fn insisted() -> bool {
    COUNT.load(Ordering::Relaxed) >= 2
}

/// `2` → `"SIGINT"`.
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}
