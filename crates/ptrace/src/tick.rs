//! A tick that interrupts the tracer's blocking `waitpid` a few times a second, so that a
//! request to stop (a flag a signal handler set, a deadline) is seen within a tick even when
//! the traced program is idle. The timer signals the tracing thread itself (other threads of
//! the tracer, such as a signal-watching one, must not take the tick), and its handler is
//! installed without `SA_RESTART`, so that the wait returns `EINTR`. The disposition of
//! `SIGALRM` that the host program had is put back when the tick ends: dprobe, a library,
//! does not change its host's signal handling.

use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;
use nix::unistd::gettid;

/// How often the wait is interrupted.
pub(crate) const TICK: Duration = Duration::from_millis(100);

extern "C" fn on_tick(_: nix::libc::c_int) {}

/// The running tick; dropping it stops the timer and gives `SIGALRM` its previous handler.
pub(crate) struct Tick {
    timer: Option<Timer>,
    previous: SigAction,
}

impl Tick {
    /// Start ticking at the calling thread.
    pub(crate) fn start() -> nix::Result<Tick> {
        let action = SigAction::new(SigHandler::Handler(on_tick), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing (async-signal-safe); the previous disposition is
        // put back when the tick ends (the traced program has its own).
        let previous = unsafe { sigaction(Signal::SIGALRM, &action) }?;
        let mut tick = Tick { timer: None, previous };
        let notify = SigevNotify::SigevThreadId { signal: Signal::SIGALRM, thread_id: gettid().as_raw(), si_value: 0 };
        let mut timer = Timer::new(ClockId::CLOCK_MONOTONIC, SigEvent::new(notify))?;
        timer.set(Expiration::Interval(TimeSpec::from_duration(TICK)), TimerSetTimeFlags::empty())?;
        tick.timer = Some(timer);
        Ok(tick)
    }
}

impl Drop for Tick {
    fn drop(&mut self) {
        // The timer first: no tick may come after its handler is gone.
        self.timer = None;
        // SAFETY: puts back the handler the program had, exactly as `sigaction` returned it.
        let _ = unsafe { sigaction(Signal::SIGALRM, &self.previous) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn host_handler(_: nix::libc::c_int) {}

    #[test]
    fn the_hosts_sigalrm_handler_is_back_when_the_tick_ends() {
        let host = SigAction::new(SigHandler::Handler(host_handler), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handler does nothing; no other test of this crate uses SIGALRM.
        unsafe { sigaction(Signal::SIGALRM, &host) }.unwrap();
        let tick = Tick::start().unwrap();
        drop(tick);
        // SAFETY: reads the disposition back (and leaves it as it is).
        let now = unsafe { sigaction(Signal::SIGALRM, &host) }.unwrap();
        let SigHandler::Handler(h) = now.handler() else { panic!("not a handler") };
        assert_eq!(h as usize, host_handler as extern "C" fn(nix::libc::c_int) as usize);
        assert!(now.flags().contains(SaFlags::SA_RESTART));
        // SAFETY: the default disposition again.
        unsafe { sigaction(Signal::SIGALRM, &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty())) }
            .unwrap();
    }
}
