//! Waits that a safepoint's signal ended, resumed as if it had not come.
//!
//! A safepoint signals only threads that run (`blocked.rs`), but a thread found running may be
//! asleep again when the signal comes: a `nanosleep`, `poll` or `select` then returns `EINTR`
//! after any handler, whatever `SA_RESTART` says, and the program sees its sleep cut short
//! (21 to 26 of them in 30 attaches of the agent to threads sleeping a few microseconds at a
//! time). So the safepoint's handler looks at what it interrupted: the instruction before is a
//! `syscall`, the call's result is `-EINTR`, and the instruction before that names the call
//! (`mov eax, NR`, as the C library's wrappers load it; glibc 2.41 and later make the calls
//! of a threaded program through one function that takes the number in a register, and
//! there nothing is resumed). For these waits it makes the call again from the handler and
//! gives the program that call's result instead:
//!
//! - `nanosleep`, relative `clock_nanosleep`, `poll` with a timeout, and a `futex` wait with
//!   a timeout (`sem_timedwait`, `pthread_mutex_timedlock`, `pthread_cond_timedwait`) go on
//!   with `restart_syscall`: the kernel recorded the call when the signal ended it (its
//!   deadline, its descriptors or word) and keeps the record until a handler returns. They
//!   always make a new record when a signal ends them, so the record is this call's.
//! - `ppoll` and `pselect6` (which the C library's `select` makes) with a timeout are made
//!   again with their arguments: the kernel wrote the time left into their timeouts; so is an
//!   absolute `clock_nanosleep`, whose deadline stands.
//!
//! - Waits without a timeout are made again as the variant of the call that takes a signal
//!   mask: `poll` as `ppoll`, `epoll_wait` as `epoll_pwait`, `pause` as `rt_sigsuspend`;
//!   `ppoll`, `pselect6`, `epoll_pwait`, `epoll_pwait2` and `sigsuspend` as themselves.
//!
//! Other waits (`epoll_wait` with a timeout, whose time left is not written back,
//! `sigtimedwait`, `read` of a socket with a receive timeout) still return `EINTR`.
//!
//! The program's signals keep their effect: none is let in from the handler's start until the
//! resumed call, which takes the program's mask (the calls with a mask argument atomically;
//! the others just before, where a signal that comes in between runs its handler, whose return
//! wipes the kernel's record: `restart_syscall` then ends with `EINTR`, as the first call would
//! have). A wait without a timeout must take the mask atomically: a program's signal that came
//! just before it would run its handler and leave the wait to go on for ever, where the first
//! would have ended with `EINTR`. Another signal of the program's ends the resumed wait as it would
//! have ended the first. When one was delivered with dprobe's (its handler's frame is below),
//! the place interrupted is that handler's first instruction, not a `syscall`: nothing is
//! resumed. `pthread_cancel` cancels a thread in a resumed wait as in the first: the C
//! library's handler unwinds the thread's stack through dprobe's handler (which lets it).

use crate::context::SignalContext;
use crate::sys;

const EINTR: u64 = (-libc::EINTR) as i64 as u64;

/// How an interrupted call is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// With `restart_syscall`: the kernel's record of the call.
    Restart,
    /// As call `nr` with the arguments, the one at index `mask` pointing to the signal mask
    /// it waits with (its size next to it): the program's where it gives none.
    Masked { nr: i64, mask: usize },
    /// `pselect6` again, likewise (argument 5 points to the mask and its size).
    Pselect6,
    /// The same call again, with the same arguments.
    Again,
}

/// Whether a resumed wait ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// At its timeout or deadline.
    InTime,
    /// Only when what it waits for comes (a descriptor ready, a signal).
    Never,
}

/// How call `nr` with arguments `args`, ended by a signal with `EINTR`, is resumed, if it is.
/// A wait without a timeout is made again through its variant that takes a signal mask
/// (`poll` as `ppoll`, `epoll_wait` as `epoll_pwait`, `pause` as `rt_sigsuspend`), its
/// arguments changed to say so: the program's signals must be let in atomically with the
/// wait, or one that came just before would leave it waiting for ever.
fn resume_of(nr: i64, args: &mut [u64; 6]) -> Option<(Resume, Ends)> {
    const TIMER_ABSTIME: u64 = 1;
    // `futex`'s operation without its private and clock flags.
    let futex_op = args[1] as i32 & !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
    let ends = |timeout: bool| if timeout { Ends::InTime } else { Ends::Never };
    let resume = match nr {
        libc::SYS_nanosleep => (Resume::Restart, Ends::InTime),
        libc::SYS_clock_nanosleep if args[1] & TIMER_ABSTIME == 0 => (Resume::Restart, Ends::InTime),
        libc::SYS_clock_nanosleep => (Resume::Again, Ends::InTime),
        // Without a timeout the kernel restarts the wait itself (the handler is `SA_RESTART`).
        libc::SYS_futex if matches!(futex_op, libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET) && args[3] != 0 => {
            (Resume::Restart, Ends::InTime)
        }
        libc::SYS_poll if args[2] as i32 >= 0 => (Resume::Restart, Ends::InTime),
        libc::SYS_poll => {
            // `ppoll(fds, nfds, NULL, mask)`.
            args[2] = 0;
            args[3] = 0;
            (Resume::Masked { nr: libc::SYS_ppoll, mask: 3 }, Ends::Never)
        }
        libc::SYS_ppoll => (Resume::Masked { nr, mask: 3 }, ends(args[2] != 0)),
        libc::SYS_pselect6 => (Resume::Pselect6, ends(args[4] != 0)),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait if args[3] as i32 >= 0 => return None,
        libc::SYS_epoll_wait => {
            // `epoll_pwait(epfd, events, maxevents, -1, mask)`.
            args[4] = 0;
            (Resume::Masked { nr: libc::SYS_epoll_pwait, mask: 4 }, Ends::Never)
        }
        libc::SYS_epoll_pwait => (Resume::Masked { nr, mask: 4 }, Ends::Never),
        // Its timeout is not written back with the time left: only a wait without one.
        libc::SYS_epoll_pwait2 if args[3] == 0 => (Resume::Masked { nr, mask: 4 }, Ends::Never),
        libc::SYS_pause => {
            // `rt_sigsuspend(mask)`, the program's mask.
            args[0] = 0;
            (Resume::Masked { nr: libc::SYS_rt_sigsuspend, mask: 0 }, Ends::Never)
        }
        libc::SYS_rt_sigsuspend => (Resume::Masked { nr, mask: 0 }, Ends::Never),
        _ => return None,
    };
    Some(resume)
}

/// The call made by the `mov eax, imm32; syscall` that ends just before `rip`, if it does;
/// one load of another register from the stack may come between them (`mov edi,
/// [rsp+disp8]`, as in glibc 2.36's `pselect`).
fn call_before(rip: u64) -> Option<i64> {
    let mut code = [0u8; 12];
    sys::read_memory(dprobe_arch::Addr(rip.checked_sub(12)?), &mut code).ok()?;
    if code[10..] != [0x0f, 0x05] {
        return None;
    }
    let between = [0, 4, 5].into_iter().find(|&n| {
        let at = 10 - n;
        code[at - 5] == 0xb8 && (n == 0 || loads_another_register_from_the_stack(&code[at..10]))
    })?;
    let at = 10 - between - 5;
    Some(i64::from(u32::from_le_bytes(code[at + 1..at + 5].try_into().expect("4 bytes"))))
}

/// Whether `insn` is `mov r32/r64, [rsp+disp8]` (with or without a REX prefix) into another
/// register than `eax`/`rax`: it leaves the call's number where the `mov eax` put it.
fn loads_another_register_from_the_stack(insn: &[u8]) -> bool {
    let (rex, rest) = match insn {
        [rex @ 0x40..=0x4f, rest @ ..] => (*rex, rest),
        rest => (0, rest),
    };
    // 8b /r, mod 01 (disp8), rm 100 (a SIB byte follows), SIB 0x24 ([rsp]).
    let [0x8b, modrm, 0x24, _disp] = *rest else { return false };
    let reg = (modrm >> 3 & 7) | (rex >> 2 & 1) << 3;
    modrm & 0xc7 == 0x44 && reg != 0
}

/// The 8-byte signal set at `at` in this process (`None` at 0, or where it cannot be read).
fn mask_at(at: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    (at != 0).then_some(())?;
    sys::read_memory(dprobe_arch::Addr(at), &mut word).ok().map(|()| u64::from_ne_bytes(word))
}

/// Resume the wait the signal of the running handler ended, if it ended one that can be (see
/// the module's comment); its result then goes into the interrupted context. Called with the
/// program's asynchronous signals blocked since the handler began, last in the handler (it
/// may wait as long as the program asked to); the caller puts the handler's mask back.
/// Async-signal-safe: system calls alone.
pub(crate) fn resume(ctx: &mut SignalContext) {
    if ctx.greg(libc::REG_RAX) != EINTR {
        return;
    }
    let Some(nr) = call_before(ctx.rip()) else { return };
    let mut args =
        [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX, libc::REG_R10, libc::REG_R8, libc::REG_R9].map(|r| ctx.greg(r));
    let Some((how, ends)) = resume_of(nr, &mut args) else { return };
    let keep_out = kept_out(ends);
    let program = ctx.blocked_signals();
    let result = match how {
        Resume::Again => {
            sys::set_signal_mask(program | keep_out);
            // SAFETY: the program's own call, made again from its thread with its arguments
            // (its memory as the program left it).
            unsafe { sys::raw_syscall6(nr, args) }
        }
        Resume::Restart => {
            sys::set_signal_mask(program | keep_out);
            // SAFETY: restart_syscall takes no argument: it goes on with the kernel's record
            // of this thread's interrupted call (or returns `EINTR` where there is none).
            unsafe { sys::raw_syscall6(libc::SYS_restart_syscall, [0; 6]) }
        }
        Resume::Masked { nr, mask: at } => {
            let mask = mask_at(args[at]).unwrap_or(program) | keep_out;
            args[at] = &mask as *const u64 as u64;
            args[at + 1] = 8;
            // SAFETY: the program's own call (or its variant with a mask), made again from
            // its thread with its arguments (its memory as the program left it), the mask
            // replaced by one on this frame.
            unsafe { sys::raw_syscall6(nr, args) }
        }
        Resume::Pselect6 => {
            let given = mask_at(args[5]).and_then(mask_at);
            let mask = given.unwrap_or(program) | keep_out;
            let with_size: [u64; 2] = [&mask as *const u64 as u64, 8];
            args[5] = with_size.as_ptr() as u64;
            // SAFETY: as for `Masked`; `pselect6`'s last argument points to a mask and its
            // size, both on this frame.
            unsafe { sys::raw_syscall6(libc::SYS_pselect6, args) }
        }
    };
    ctx.set_greg(libc::REG_RAX, result as u64);
}

/// The safepoint signals blocked during a resumed wait (a set, bit N-1 for signal N). A wait
/// that ends in time keeps both out: another safepoint's would end it again. One without an
/// end keeps out only those the program ignores: a program may wake a thread with the
/// real-time one (dprobe's handler passes its own uses on), or with `SIGURG` once it handles
/// it, and a wait that cannot take the signal would wait for ever. (A safepoint's signal,
/// rare there since a sleeping thread is not signalled, then ends the wait with `EINTR`.)
fn kept_out(ends: Ends) -> u64 {
    let signals = crate::safepoint::safepoint_signals();
    let kept = signals.iter().filter(|&&sig| ends == Ends::InTime || crate::safepoint::silent_for_the_program(sig));
    kept.fold(0u64, |set, sig| set | 1 << (sig - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_millis(300);

    /// Whether this process's C library loads the call's number just before its `syscall`
    /// in `clock_nanosleep` (glibc up to 2.40): the shape the handler recognizes.
    pub(crate) fn wrappers_name_their_calls() -> bool {
        // SAFETY: dlsym with a valid name; the bytes read are the function's code.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"clock_nanosleep".as_ptr()) } as u64;
        let mut code = [0u8; 160];
        f != 0
            && sys::read_memory(dprobe_arch::Addr(f), &mut code).is_ok()
            && code.windows(7).any(|w| w[0] == 0xb8 && w[1..5] == 230u32.to_le_bytes() && w[5..] == [0x0f, 0x05])
    }

    /// `wait` made on a thread of its own, the safepoint's signal sent to it 50 ms in, then
    /// `then` done to it (given its thread): its result, `errno`, and how long it took.
    fn interrupted(wait: fn() -> i32, then: impl FnOnce(libc::pthread_t)) -> (i32, i32, Duration) {
        crate::safepoint::install().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            // SAFETY: gettid has no argument; pthread_self neither.
            tx.send(unsafe { (libc::gettid(), libc::pthread_self()) }).unwrap();
            let start = Instant::now();
            let result = wait();
            (result, std::io::Error::last_os_error().raw_os_error().unwrap_or(0), start.elapsed())
        });
        let (tid, thread) = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        crate::safepoint::stale_signal(tid).unwrap();
        then(thread);
        waiter.join().unwrap()
    }

    fn timespec(d: Duration) -> libc::timespec {
        libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ }
    }

    #[test]
    fn the_call_is_read_from_the_mov_before_the_syscall() {
        // Bytes laid out as code, the `syscall` last: the call read from them.
        let call = |bytes: &[u8]| {
            let mut code = vec![0x90; 16];
            code.extend_from_slice(bytes);
            call_before(code.as_ptr() as u64 + code.len() as u64)
        };
        assert_eq!(call(&[0xb8, 0xe6, 0, 0, 0, 0x0f, 0x05]), Some(230));
        assert_eq!(call(&[0xb8, 0x0e, 1, 0, 0, 0x8b, 0x7c, 0x24, 0x1c, 0x0f, 0x05]), Some(270), "glibc's pselect");
        assert_eq!(call(&[0xb8, 7, 0, 0, 0, 0x4c, 0x8b, 0x54, 0x24, 8, 0x0f, 0x05]), Some(7), "into r10");
        assert_eq!(call(&[0xb8, 7, 0, 0, 0, 0x8b, 0x44, 0x24, 8, 0x0f, 0x05]), None, "eax loaded again");
        assert_eq!(call(&[0xb8, 7, 0, 0, 0, 0x89, 0xc7, 0x0f, 0x05]), None, "another instruction");
        assert_eq!(call(&[0x48, 0x89, 0xf8, 0x0f, 0x05]), None, "the number in a register");
        assert_eq!(call(&[0xb8, 7, 0, 0, 0, 0x90]), None, "no syscall");
    }

    #[test]
    fn the_calls_resumed_and_how() {
        use {Ends::*, Resume::*};
        let of = |nr: i64, args: [u64; 6]| {
            let mut args = args;
            resume_of(nr, &mut args).map(|r| (r, args))
        };
        let how = |nr: i64, args: [u64; 6]| of(nr, args).map(|(r, _)| r);
        let args = |second: u64, third: u64, fifth: u64| [0, second, third, 0, fifth, 0];
        assert_eq!(how(libc::SYS_nanosleep, args(0, 0, 0)), Some((Restart, InTime)));
        assert_eq!(how(libc::SYS_clock_nanosleep, args(0, 0, 0)), Some((Restart, InTime)));
        assert_eq!(how(libc::SYS_clock_nanosleep, args(1, 0, 0)), Some((Again, InTime)), "absolute");
        assert_eq!(how(libc::SYS_poll, args(0, 10, 0)), Some((Restart, InTime)));
        let ppoll = Masked { nr: libc::SYS_ppoll, mask: 3 };
        let forever = [7, 2, u32::MAX as u64, 9, 9, 9];
        assert_eq!(of(libc::SYS_poll, forever), Some(((ppoll, Never), [7, 2, 0, 0, 9, 9])), "as ppoll, no mask");
        assert_eq!(how(libc::SYS_ppoll, args(0, 0x1000, 0)), Some((ppoll, InTime)));
        assert_eq!(how(libc::SYS_ppoll, args(0, 0, 0)), Some((ppoll, Never)), "no timeout");
        assert_eq!(how(libc::SYS_pselect6, args(0, 0, 0x1000)), Some((Pselect6, InTime)));
        assert_eq!(how(libc::SYS_pselect6, args(0, 0, 0)), Some((Pselect6, Never)), "no timeout");
        let epoll_pwait = Masked { nr: libc::SYS_epoll_pwait, mask: 4 };
        let epoll = |timeout: i32| [3, 0x1000, 8, timeout as u32 as u64, 9, 9];
        assert_eq!(how(libc::SYS_epoll_wait, epoll(10)), None, "a timeout");
        assert_eq!(how(libc::SYS_epoll_pwait, epoll(0)), None, "a timeout");
        assert_eq!(
            of(libc::SYS_epoll_wait, epoll(-1)),
            Some(((epoll_pwait, Never), [3, 0x1000, 8, u32::MAX as u64, 0, 9]))
        );
        assert_eq!(of(libc::SYS_epoll_pwait, epoll(-1)), Some(((epoll_pwait, Never), epoll(-1))), "its own mask");
        let pwait2 = Masked { nr: libc::SYS_epoll_pwait2, mask: 4 };
        assert_eq!(how(libc::SYS_epoll_pwait2, [3, 0x1000, 8, 0, 0, 0]), Some((pwait2, Never)));
        assert_eq!(how(libc::SYS_epoll_pwait2, [3, 0x1000, 8, 0x2000, 0, 0]), None, "a timeout");
        let sigsuspend = Masked { nr: libc::SYS_rt_sigsuspend, mask: 0 };
        assert_eq!(of(libc::SYS_pause, [9; 6]), Some(((sigsuspend, Never), [0, 9, 9, 9, 9, 9])), "the program's mask");
        assert_eq!(
            of(libc::SYS_rt_sigsuspend, [0x1000, 8, 9, 9, 9, 9]).map(|(r, a)| (r, a[0])),
            Some(((sigsuspend, Never), 0x1000))
        );
        assert_eq!(how(libc::SYS_read, args(0, 0, 0)), None);
        assert_eq!(how(libc::SYS_futex, args(0, 0, 0)), None, "a wait without a timeout");
        let futex = |op: i32, timeout: u64| [0, op as u64, 0, timeout, 0, 0];
        assert_eq!(how(libc::SYS_futex, futex(libc::FUTEX_WAIT, 0x1000)), Some((Restart, InTime)));
        let bitset = libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME;
        assert_eq!(how(libc::SYS_futex, futex(bitset, 0x1000)), Some((Restart, InTime)));
        assert_eq!(how(libc::SYS_futex, futex(libc::FUTEX_WAKE, 0x1000)), None, "no wait");
        assert_eq!(how(libc::SYS_futex, futex(libc::FUTEX_LOCK_PI, 0x1000)), None, "not a plain wait");
    }

    #[test]
    fn sleeps_polls_selects_and_timed_futex_waits_ended_by_the_signal_go_on_to_their_end() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
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
        fn ppoll() -> i32 {
            // SAFETY: no descriptors, a valid timeout, no mask.
            unsafe { libc::ppoll(std::ptr::null_mut(), 0, &timespec(WAIT), std::ptr::null()) }
        }
        fn sleep_until() -> i32 {
            // SAFETY: a timespec filled by the kernel, then a valid absolute deadline.
            unsafe {
                let mut now: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                let deadline = Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + WAIT;
                let until = timespec(deadline);
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &until, std::ptr::null_mut())
            }
        }
        fn sem_timedwait() -> i32 {
            // SAFETY: a semaphore on this frame, initialized, waited for until a valid
            // deadline (it is never posted), then destroyed.
            unsafe {
                let mut sem: libc::sem_t = std::mem::zeroed();
                assert_eq!(libc::sem_init(&mut sem, 0, 0), 0);
                let mut now: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
                let until = timespec(Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + WAIT);
                let result = libc::sem_timedwait(&mut sem, &until);
                // `ETIMEDOUT` is its end: the wait went on to its deadline.
                let result = if result == -1 && *libc::__errno_location() == libc::ETIMEDOUT { 0 } else { result };
                libc::sem_destroy(&mut sem);
                result
            }
        }
        for (name, wait) in [
            ("nanosleep", sleep as fn() -> i32),
            ("poll", poll),
            ("select", select),
            ("ppoll", ppoll),
            ("clock_nanosleep, absolute", sleep_until),
            ("sem_timedwait", sem_timedwait),
        ] {
            let (result, errno, took) = interrupted(wait, |_| {});
            assert_eq!(result, 0, "{name}: errno {errno} after {took:?}");
            assert!(took >= WAIT - Duration::from_millis(1), "{name} took {took:?}");
        }
    }

    extern "C" fn nothing(_: libc::c_int) {}

    /// `SIGUSR1` handled by a handler that does nothing, not restarting calls.
    fn handle_usr1() {
        // SAFETY: a zeroed sigaction with a handler, no flags (no SA_RESTART), an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()), 0);
        }
    }

    fn long_sleep() -> i32 {
        // SAFETY: a valid timespec.
        unsafe { libc::nanosleep(&timespec(Duration::from_secs(5)), std::ptr::null_mut()) }
    }

    #[test]
    fn a_signal_of_the_program_ends_the_resumed_wait_as_it_would_have_ended_the_first() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
        handle_usr1();
        let (result, errno, took) = interrupted(long_sleep, |thread| {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: a signal to a live thread of this process, whose handler is installed.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        });
        assert_eq!((result, errno), (-1, libc::EINTR), "after {took:?}");
        assert!(took >= Duration::from_millis(140) && took < Duration::from_secs(4), "resumed, then ended: {took:?}");
    }

    /// `f`'s result, with the `errno` it left (whatever `then` does after it).
    fn keeping_errno(f: impl FnOnce() -> i32, then: impl FnOnce()) -> i32 {
        let result = f();
        // SAFETY: this thread's errno, read and written back.
        unsafe {
            let errno = *libc::__errno_location();
            then();
            *libc::__errno_location() = errno;
        }
        result
    }

    /// A mask with `SIGUSR2` blocked, as `sigsuspend` and `epoll_pwait` take it.
    fn usr2_blocked() -> libc::sigset_t {
        // SAFETY: a set on this frame, emptied, then one signal added.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            set
        }
    }

    /// `wait` with a new epoll instance that nothing is ever ready in.
    fn with_epoll(wait: impl FnOnce(i32, *mut libc::epoll_event) -> i32) -> i32 {
        // SAFETY: a new epoll descriptor, closed below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let close = || {
            // SAFETY: the descriptor just made, closed once.
            unsafe { libc::close(fd) };
        };
        keeping_errno(|| wait(fd, events.as_mut_ptr()), close)
    }

    #[test]
    fn waits_without_a_timeout_go_on_until_the_programs_signal_ends_them() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
        handle_usr1();
        // `SIGUSR2` is handled too (its default would end the tests), and blocked by the waits
        // that take a mask: it must not end them.
        // SAFETY: a zeroed sigaction with a handler, no flags, an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nothing as *const () as usize;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()), 0);
        }
        fn poll() -> i32 {
            // SAFETY: no descriptors, no timeout.
            unsafe { libc::poll(std::ptr::null_mut(), 0, -1) }
        }
        fn ppoll() -> i32 {
            // SAFETY: no descriptors, no timeout, `SIGUSR2` blocked while it waits.
            unsafe { libc::ppoll(std::ptr::null_mut(), 0, std::ptr::null(), &usr2_blocked()) }
        }
        fn select() -> i32 {
            // SAFETY: no descriptor sets, no timeout.
            unsafe {
                libc::select(0, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
            }
        }
        fn epoll_wait() -> i32 {
            // SAFETY: a valid epoll descriptor and room for 4 events, no timeout.
            with_epoll(|fd, events| unsafe { libc::epoll_wait(fd, events, 4, -1) })
        }
        fn epoll_pwait() -> i32 {
            // SAFETY: as above, `SIGUSR2` blocked while it waits.
            with_epoll(|fd, events| unsafe { libc::epoll_pwait(fd, events, 4, -1, &usr2_blocked()) })
        }
        fn pause() -> i32 {
            // SAFETY: no arguments.
            unsafe { libc::pause() }
        }
        fn sigsuspend() -> i32 {
            // SAFETY: a valid mask, `SIGUSR2` blocked while it waits.
            unsafe { libc::sigsuspend(&usr2_blocked()) }
        }
        let masked = ["ppoll", "epoll_pwait", "sigsuspend"];
        for (name, wait) in [
            ("poll", poll as fn() -> i32),
            ("ppoll", ppoll),
            ("select", select),
            ("epoll_wait", epoll_wait),
            ("epoll_pwait", epoll_pwait),
            ("pause", pause),
            ("sigsuspend", sigsuspend),
        ] {
            // The safepoint's signal at 50 ms, then `SIGUSR2` at 150 ms, where the wait
            // blocks it, and `SIGUSR1` at 250 ms.
            let usr2 = masked.contains(&name);
            let (result, errno, took) = interrupted(wait, |thread| {
                std::thread::sleep(Duration::from_millis(100));
                if usr2 {
                    // SAFETY: a signal to a live thread of this process, handled.
                    unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
                }
                std::thread::sleep(Duration::from_millis(100));
                // SAFETY: as above.
                unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
            });
            assert_eq!((result, errno), (-1, libc::EINTR), "{name} after {took:?}");
            let ended_by_usr1 = took >= Duration::from_millis(240) && took < Duration::from_secs(4);
            assert!(ended_by_usr1, "{name}: resumed, then ended by the program's signal: {took:?}");
        }
    }

    #[test]
    fn a_thread_cancelled_in_a_resumed_wait_is_cancelled() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
        crate::safepoint::install().unwrap();
        // A C thread: the cancellation unwinds it.
        extern "C-unwind" fn sleeper(tid: *mut libc::c_void) -> *mut libc::c_void {
            // SAFETY: `tid` points to the spawner's word, alive until the join; gettid has no
            // argument.
            unsafe { std::ptr::write_volatile(tid.cast::<i32>(), libc::gettid()) };
            long_sleep();
            std::ptr::null_mut()
        }
        let mut tid = 0i32;
        let mut thread: libc::pthread_t = 0;
        let start = Instant::now();
        // SAFETY: a thread running `sleeper` with a pointer to `tid`, joined below.
        unsafe {
            let f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void =
                std::mem::transmute(sleeper as *const () as usize);
            assert_eq!(libc::pthread_create(&mut thread, std::ptr::null(), f, (&mut tid as *mut i32).cast()), 0);
        }
        // SAFETY: read while the thread may write it once.
        while unsafe { std::ptr::read_volatile(&tid) } == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        crate::safepoint::stale_signal(tid).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut result = std::ptr::null_mut();
        // SAFETY: the thread created above, joined once.
        unsafe {
            assert_eq!(libc::pthread_cancel(thread), 0);
            assert_eq!(libc::pthread_join(thread, &mut result), 0);
        }
        // PTHREAD_CANCELED is `(void *) -1`.
        assert_eq!(result as isize, -1, "cancelled, not returned");
        assert!(start.elapsed() < Duration::from_secs(4), "at once: {:?}", start.elapsed());
    }
}
