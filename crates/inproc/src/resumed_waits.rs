//! Waits that a safepoint's signal ended, resumed as if it had not come.
//!
//! A safepoint signals only threads that run (`blocked.rs`), but a thread found running may be
//! asleep again when the signal comes: a `nanosleep`, `poll` or `select` then returns `EINTR`
//! after any handler, whatever `SA_RESTART` says, and the program sees its sleep cut short
//! (about once in 30 attaches of the agent to a program that sleeps in a loop). So the
//! safepoint's handler looks at what it interrupted: the instruction before is a `syscall`, the
//! call's result is `-EINTR`, and the instructions before name the call (`mov eax, NR;
//! syscall`, as the C library's wrappers make them). For the calls below, it makes the call
//! again from the handler, with the program's own signal mask, and gives the program that
//! call's result instead:
//!
//! - `nanosleep`, relative `clock_nanosleep` and `poll` go on with `restart_syscall`: the kernel
//!   recorded the call when the signal ended it (its deadline, its descriptors), and keeps the
//!   record until the handler returns. These calls always make a new record when a signal ends
//!   them, so the record is this call's.
//! - an absolute `clock_nanosleep`, `ppoll` and `pselect6` (which the C library's `select`
//!   makes) are made again with their arguments: the first waits for the same moment, and the
//!   kernel wrote the time left into the others' timeouts.
//! - `epoll_wait` and `epoll_pwait` without a timeout likewise.
//!
//! Another signal of the program's that comes during the resumed wait ends it as it would have
//! ended the first: the wait runs with the program's mask, and its `EINTR` is the program's.
//! When another signal was delivered with dprobe's (its handler's frame is below), the place
//! interrupted is that handler's first instruction, not a `syscall`: nothing is resumed, and
//! the program sees `EINTR`, as it would without dprobe.

use crate::context::SignalContext;
use crate::sys;

const EINTR: u64 = (-libc::EINTR) as i64 as u64;

/// How an interrupted call is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// With `restart_syscall`: the kernel's record of the call.
    Restart,
    /// The same call with the same arguments.
    Again(i64),
}

/// How call `nr` with arguments `args`, ended by a signal with `EINTR`, is resumed, if it is.
fn resume_of(nr: i64, args: &[u64; 6]) -> Option<Resume> {
    const TIMER_ABSTIME: u64 = 1;
    match nr {
        libc::SYS_nanosleep | libc::SYS_poll => Some(Resume::Restart),
        libc::SYS_clock_nanosleep if args[1] & TIMER_ABSTIME == 0 => Some(Resume::Restart),
        libc::SYS_clock_nanosleep | libc::SYS_ppoll | libc::SYS_pselect6 => Some(Resume::Again(nr)),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait if args[3] as i32 == -1 => Some(Resume::Again(nr)),
        _ => None,
    }
}

/// The call made by the `mov eax, imm32; syscall` that ends just before `rip`, if it does.
fn call_before(rip: u64) -> Option<i64> {
    let mut code = [0u8; 7];
    sys::read_memory(dprobe_arch::Addr(rip.checked_sub(7)?), &mut code).ok()?;
    let nr = u32::from_le_bytes(code[1..5].try_into().expect("4 bytes"));
    (code[0] == 0xb8 && code[5..] == [0x0f, 0x05]).then_some(i64::from(nr))
}

/// Resume the wait the signal of the running handler ended, if it ended one that can be (see
/// the module's comment); its result then goes into the interrupted context. Async-signal-safe
/// (system calls alone). Call it last in the handler, once the safepoint has its answer: it
/// may wait as long as the program asked to.
pub(crate) fn resume(ctx: &mut SignalContext) {
    if ctx.greg(libc::REG_RAX) != EINTR {
        return;
    }
    let Some(nr) = call_before(ctx.rip()) else { return };
    let args =
        [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX, libc::REG_R10, libc::REG_R8, libc::REG_R9].map(|r| ctx.greg(r));
    let Some(how) = resume_of(nr, &args) else { return };
    // The program's mask, not the handler's (which adds the safepoint signal): its signals end
    // the resumed wait as they would have ended the first.
    let handler_mask = sys::signal_mask();
    sys::set_signal_mask(ctx.blocked_signals());
    // SAFETY: the program's own call, made again with its own arguments from the same thread
    // (its memory is as the program left it), or the kernel's record of it.
    let result = unsafe {
        match how {
            Resume::Restart => sys::raw_syscall6(libc::SYS_restart_syscall, [0; 6]),
            Resume::Again(nr) => sys::raw_syscall6(nr, args),
        }
    };
    sys::set_signal_mask(handler_mask);
    ctx.set_greg(libc::REG_RAX, result as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_millis(300);

    /// `wait` made on a thread of its own, the safepoint's signal sent to it 50 ms in (and
    /// `SIGUSR1` at `usr1`, if given): its result, `errno`, and how long it took.
    fn interrupted(wait: fn() -> i32, usr1: Option<Duration>) -> (i32, i32, Duration) {
        crate::safepoint::install().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            // SAFETY: gettid has no argument.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let start = Instant::now();
            let result = wait();
            (result, std::io::Error::last_os_error().raw_os_error().unwrap_or(0), start.elapsed())
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        crate::safepoint::stale_signal(tid).unwrap();
        if let Some(after) = usr1 {
            std::thread::sleep(after);
            // SAFETY: a signal to a thread of this process, whose handler is installed.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
        }
        waiter.join().unwrap()
    }

    fn timespec(d: Duration) -> libc::timespec {
        libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ }
    }

    #[test]
    fn sleeps_polls_and_selects_ended_by_the_signal_go_on_to_their_end() {
        fn sleep() -> i32 {
            // SAFETY: a valid timespec; no remainder asked for.
            unsafe { libc::nanosleep(&timespec(WAIT), std::ptr::null_mut()) }
        }
        fn poll() -> i32 {
            // SAFETY: no descriptors.
            unsafe { libc::poll(std::ptr::null_mut(), 0, WAIT.as_millis() as i32) }
        }
        fn select() -> i32 {
            let mut timeout = libc::timeval { tv_sec: 0, tv_usec: WAIT.as_micros() as _ };
            // SAFETY: no descriptor sets, a valid timeout.
            unsafe { libc::select(0, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), &mut timeout) }
        }
        fn until() -> i32 {
            let mut now = timespec(Duration::ZERO);
            // SAFETY: valid timespecs.
            unsafe {
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                let end = timespec(Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + WAIT);
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &end, std::ptr::null_mut())
            }
        }
        for (name, wait) in [("nanosleep", sleep as fn() -> i32), ("poll", poll), ("select", select), ("until", until)]
        {
            let (result, errno, took) = interrupted(wait, None);
            assert_eq!(result, 0, "{name}: errno {errno} after {took:?}");
            assert!(took >= WAIT - Duration::from_millis(1), "{name} took {took:?}");
        }
    }

    #[test]
    fn a_signal_of_the_program_ends_the_resumed_wait_as_it_would_have_ended_the_first() {
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, without SA_RESTART (nanosleep ignores it anyway).
        unsafe { libc::signal(libc::SIGUSR1, nothing as *const () as usize) };
        fn long_sleep() -> i32 {
            // SAFETY: a valid timespec.
            unsafe { libc::nanosleep(&timespec(Duration::from_secs(5)), std::ptr::null_mut()) }
        }
        let (result, errno, took) = interrupted(long_sleep, Some(Duration::from_millis(100)));
        assert_eq!((result, errno), (-1, libc::EINTR), "after {took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    #[test]
    fn the_calls_resumed_and_how() {
        let args = |flags: u64, fourth: u64| [0, flags, 0, fourth, 0, 0];
        assert_eq!(resume_of(libc::SYS_nanosleep, &args(0, 0)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_clock_nanosleep, &args(0, 0)), Some(Resume::Restart));
        let absolute = resume_of(libc::SYS_clock_nanosleep, &args(1, 0));
        assert_eq!(absolute, Some(Resume::Again(libc::SYS_clock_nanosleep)));
        assert_eq!(resume_of(libc::SYS_poll, &args(0, 0)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_pselect6, &args(0, 0)), Some(Resume::Again(libc::SYS_pselect6)));
        let forever = resume_of(libc::SYS_epoll_wait, &args(0, u32::MAX as u64));
        assert_eq!(forever, Some(Resume::Again(libc::SYS_epoll_wait)));
        assert_eq!(resume_of(libc::SYS_epoll_wait, &args(0, 100)), None, "a timeout would start again");
        assert_eq!(resume_of(libc::SYS_read, &args(0, 0)), None);
        assert_eq!(resume_of(libc::SYS_futex, &args(0, 0)), None);
    }
}
