//! Waiting for the end of a command dprobe started, once a stop signal ended its trace: the
//! signal's end is the command's too when the command got it.

use std::time::Instant;

use dprobe_core::{Exit, WaitForProgram};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::tick::Tick;

/// Wait for the end of command `pid`, let go because a signal stopped the trace: pass the
/// signal on when and if `wait` says so, and wait as long as it says, or until `give_up` says
/// so. `None` when it was not seen to end. Threads of its (or of a followed child) still
/// traced until this thread ends (see `Tracee::let_go_as_thread_ends`) have their stops
/// passed on meanwhile: each signal delivered as it comes.
pub fn wait_for_command(pid: i32, wait: WaitForProgram, give_up: &dyn Fn() -> bool) -> Option<Exit> {
    // The tick interrupts the wait, for `give_up` and the moments of `wait` to be looked at:
    // a stop signal's own handler may run on another thread of dprobe's. Without one, the
    // wait looks every tenth of a second instead.
    let tick = Tick::start().ok();
    let flags = if tick.is_some() { libc::__WALL } else { libc::__WALL | libc::WNOHANG };
    let start = Instant::now();
    let mut to_pass_on = wait.pass_on_after.zip(Signal::try_from(wait.signal).ok());
    loop {
        if let Some((_, signal)) = to_pass_on.filter(|(after, _)| start.elapsed() >= *after) {
            let _ = kill(Pid::from_raw(pid), signal);
            to_pass_on = None;
        }
        let mut status = 0;
        // SAFETY: waits for a child or a tracee of dprobe's; `status` is a valid out-pointer.
        let tid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if tid <= 0 {
            let patient = wait.patience.is_none_or(|p| start.elapsed() < p);
            let errno = if tid == 0 { Errno::EINTR } else { Errno::last() };
            match errno {
                Errno::EINTR if patient && !give_up() => {
                    if tid == 0 {
                        std::thread::sleep(crate::tick::TICK);
                    }
                    continue;
                }
                _ => return None,
            }
        }
        if libc::WIFSTOPPED(status) {
            crate::let_go::pass_on(tid, status);
        } else if tid == pid && libc::WIFEXITED(status) {
            return Some(Exit::Code(libc::WEXITSTATUS(status)));
        } else if tid == pid && libc::WIFSIGNALED(status) {
            return Some(Exit::Signal(libc::WTERMSIG(status)));
        }
    }
}
