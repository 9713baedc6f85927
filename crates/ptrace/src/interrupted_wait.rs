//! Waits that the tracer's interrupt ends with `EINTR`, where untraced they would have waited
//! on.
//!
//! `PTRACE_INTERRUPT` wakes a thread as a signal does. Most waits are then restarted by the
//! kernel when the thread resumes (`-ERESTARTSYS` and the like: `read`, `poll`, `futex`), but
//! some return `EINTR` at once, as they do after a stop signal and `SIGCONT` (`signal(7)`):
//! `epoll_wait`, `sigwaitinfo`, `semop`, `io_uring_enter`, `io_getevents`. An `epoll` loop
//! attached to saw one `EINTR` per try to stop it at a safe place for the agent, up to 200, and
//! was then refused; the ptrace engine gave it two per attach (attach and detach).

use crate::error::TraceError;
use crate::sys::{self, EINTR, ERESTARTNOHAND};

/// `io_pgetevents` on x86-64 (Linux 4.18; not in the `libc` crate).
pub(crate) const SYS_IO_PGETEVENTS: i64 = 333;

/// Waits that end with `EINTR` when the tracer's interrupt stops their thread.
const ENDED_BY_AN_INTERRUPT: [i64; 9] = [
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_io_uring_enter,
    libc::SYS_io_getevents,
    SYS_IO_PGETEVENTS,
];

/// `io_uring_enter`'s flags: wait for completions; its argument is a structure (which may hold
/// a timeout).
const IORING_ENTER_GETEVENTS: u64 = 1;
const IORING_ENTER_EXT_ARG: u64 = 8;

/// Where the tracer's interrupt ended the wait of thread `tid` (stopped with registers `r`)
/// with `EINTR`, and the wait has no timeout: make the kernel enter it again when the thread
/// resumes (`-ERESTARTNOHAND`, as for `poll`: a signal whose handler runs ends it with
/// `EINTR`, as it would have untraced), so that the program never sees the interrupt. A
/// wait with a timeout keeps its `EINTR`: entered again, it would wait its whole timeout
/// again, and an event loop that computes its timeout from its timers would wake late; it
/// returns early once, as after a signal, and the loop computes it again.
pub(crate) fn wait_on(tid: i32, r: &mut libc::user_regs_struct) -> Result<(), TraceError> {
    let call = r.orig_rax as i64;
    if r.rax as i64 != EINTR || !ENDED_BY_AN_INTERRUPT.contains(&call) {
        return Ok(());
    }
    let forever = match call {
        // The timeout in milliseconds (an `int`): negative waits for ever.
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => (r.r10 as i32) < 0,
        // A `struct timespec *`: null waits for ever.
        libc::SYS_epoll_pwait2 | libc::SYS_semtimedop => r.r10 == 0,
        libc::SYS_rt_sigtimedwait => r.rdx == 0,
        libc::SYS_io_getevents | SYS_IO_PGETEVENTS => r.r8 == 0,
        // Waiting for completions only (entered again, it would submit nothing), with no
        // timeout: ended with `EINTR`, it had submitted nothing either.
        libc::SYS_io_uring_enter => {
            r.rsi == 0 && r.r10 & IORING_ENTER_GETEVENTS != 0 && r.r10 & IORING_ENTER_EXT_ARG == 0
        }
        _ => true,
    };
    if forever {
        r.rax = ERESTARTNOHAND as u64;
        sys::set_regs(tid, r)?;
    }
    Ok(())
}
