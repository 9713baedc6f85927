//! A tick that interrupts the tracer's blocking `waitpid` a few times a second, so that a
//! request to stop (a flag a signal handler set, a deadline) is seen within a tick even when
//! the traced program is idle. The timer signals the tracing thread itself (other threads of
//! the tracer, such as a signal-watching one, must not take the tick), and its handler is
//! installed without `SA_RESTART`, so that the wait returns `EINTR`.

use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;
use nix::unistd::gettid;

/// How often the wait is interrupted.
pub(crate) const TICK: Duration = Duration::from_millis(100);

extern "C" fn on_tick(_: nix::libc::c_int) {}

/// The running tick; dropping it stops the timer.
pub(crate) struct Tick {
    _timer: Timer,
}

impl Tick {
    /// Start ticking at the calling thread.
    pub(crate) fn start() -> nix::Result<Tick> {
        let action = SigAction::new(SigHandler::Handler(on_tick), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing (async-signal-safe); `SIGALRM` is dprobe's own
        // (the traced program has its own signal dispositions).
        unsafe { sigaction(Signal::SIGALRM, &action) }?;
        let notify = SigevNotify::SigevThreadId { signal: Signal::SIGALRM, thread_id: gettid().as_raw(), si_value: 0 };
        let mut timer = Timer::new(ClockId::CLOCK_MONOTONIC, SigEvent::new(notify))?;
        timer.set(Expiration::Interval(TimeSpec::from_duration(TICK)), TimerSetTimeFlags::empty())?;
        Ok(Tick { _timer: timer })
    }
}
