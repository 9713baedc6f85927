//! Ending a trace on request: Ctrl-C, `SIGTERM`, `SIGHUP`, and a tick that interrupts the
//! tracer's wait so that requests and `--duration` are seen within a tenth of a second even
//! when the traced program is idle.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The signal that asked dprobe to stop (0: none yet).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// How many stop signals came.
static COUNT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    REQUESTED.store(signal, Ordering::Relaxed);
    COUNT.fetch_add(1, Ordering::Relaxed);
}

/// Whether a second stop signal came (the user insists: stop waiting).
pub fn insisted() -> bool {
    COUNT.load(Ordering::Relaxed) >= 2
}

extern "C" fn on_tick(_: libc::c_int) {}

const TICK: Duration = Duration::from_millis(100);

fn set_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handlers only store to an atomic (async-signal
    // safe); no SA_RESTART, so that a blocked wait returns EINTR and the loop looks.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Catch the stop signals and start the tick.
pub fn install() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        set_handler(signal, on_stop_signal)?;
    }
    set_handler(libc::SIGALRM, on_tick)?;
    let tick = libc::timeval { tv_sec: 0, tv_usec: TICK.as_micros() as libc::suseconds_t };
    let timer = libc::itimerval { it_interval: tick, it_value: tick };
    // SAFETY: passes a valid itimerval.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stop the tick (once tracing is over).
pub fn stop_tick() {
    let zero = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let timer = libc::itimerval { it_interval: zero, it_value: zero };
    // SAFETY: passes a valid itimerval.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// The signal that asked dprobe to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// `SIGINT` → `"SIGINT"`.
pub fn signal_name(signal: i32) -> String {
    let names = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
    ];
    names.iter().find(|(n, _)| *n == signal).map_or_else(|| format!("signal {signal}"), |(_, s)| (*s).to_owned())
}
