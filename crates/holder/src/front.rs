//! The front: wait for the holder, pass the stop signals on, end as the holder ended.

use std::fs::File;
use std::io::{self, Write};

use nix::libc;
use nix::sys::signal::{raise, signal, SigHandler, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::link::Forwarded;

/// Runs in the front until the holder ends, then ends the same way. `passed` are the stop
/// signals passed on (`stops` without those dprobe was started with ignored).
pub(crate) fn run(holder: Pid, mut pipe: File, signals: &SignalFd, stops: &[Signal], passed: &[Signal]) -> ! {
    loop {
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            // Interrupted (a stop and continue of the front): look at the holder, wait on.
            _ => {
                relay_if_ended(holder, stops);
                continue;
            }
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
        if signal == Signal::SIGCHLD {
            relay_if_ended(holder, stops);
            continue;
        }
        // The terminal's signals went to the whole foreground process group, the holder
        // included: passing them on would count each twice.
        if info.ssi_code == libc::SI_KERNEL || !passed.contains(&signal) {
            continue;
        }
        // A holder that has ended cannot be told (SIGPIPE is ignored); its status comes next.
        let _ = Forwarded { signal: signal as i32, sender: info.ssi_pid as i32 }.send(&mut pipe);
    }
}

/// If the holder has ended, end the same way.
fn relay_if_ended(holder: Pid, stops: &[Signal]) {
    match waitpid(holder, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => end_by(holder, signal, stops),
        _ => {}
    }
}

/// The holder was killed by `signal`: the front ends by it too, so that whoever waits for
/// dprobe sees it (a shell's Ctrl-C that came before the holder caught the stop signals).
fn end_by(holder: Pid, killer: Signal, stops: &[Signal]) -> ! {
    if !stops.contains(&killer) {
        eprintln!("dprobe: its tracing process {holder} was killed by {}", killer.as_str());
    }
    let _ = io::stderr().flush();
    // SAFETY: the default action installs no handler, so no code of ours runs at the signal.
    let _ = unsafe { signal(killer, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(killer);
    let _ = set.thread_unblock();
    let _ = raise(killer);
    std::process::exit(128 + killer as i32);
}
