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
//! there nothing is resumed). For these bounded waits it makes the call again from the
//! handler and gives the program that call's result instead:
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
//! - Waits for a signal, `sigsuspend`, `pause` and `sigwaitinfo` (`rt_sigtimedwait` without a
//!   timeout), are made again for at most [`SIGNAL_WAIT_BOUND`]: what ends them, a signal of
//!   the program's, stays pending until the call takes it (`sigsuspend` and `pause` as a
//!   `ppoll` of no descriptor with the call's mask, which ends as they do when a handler ran).
//!   A wait that returned at dprobe's signal would say a handler ran, or that no signal came,
//!   when none of the program's did. Bounded, because of the two cases below where a handler
//!   of the program's ran already: the wakeup it was is then missed for that long at most,
//!   and the call ends with `EINTR` as the first did.
//!
//! Other waits without a timeout are not resumed: a program's wakeup missed there (below) would
//! be missed for ever. `sigtimedwait` with a timeout is not resumed either: the kernel does not
//! say how much of it is left.
//!
//! The program's signals keep their effect: none is let in from the handler's start until the
//! resumed call, which takes the program's mask (`ppoll` and `pselect6` atomically, with their
//! mask argument; the others just before, where a signal that comes in between runs its handler,
//! whose return wipes the kernel's record: `restart_syscall` then ends with `EINTR`, as the
//! first call would have). Another signal of the program's ends the resumed wait as it would
//! have ended the first. When one was delivered with dprobe's and its frame is below (a signal
//! numbered below the safepoint's, taken first), the place interrupted is that handler's first
//! instruction, not a `syscall`: nothing is resumed. Two cases look like dprobe's own `EINTR`:
//! a signal of the program's numbered above `SIGURG` pending with it runs its handler first
//! and returns into dprobe's, and a safepoint signal held pending while a program's handler
//! blocked it comes as that handler returns. The calls resumed by `restart_syscall` still end
//! at once there (the program's handler's return wiped the kernel's record); those made again
//! (`ppoll`, `pselect6`, an absolute `clock_nanosleep`) miss the program's wakeup until their
//! timeout. `pthread_cancel` cancels a thread in a resumed wait as in the first: the C
//! library's handler unwinds the thread's stack through dprobe's handler (which lets it).

use crate::context::SignalContext;
use crate::sys;

const EINTR: u64 = (-libc::EINTR) as i64 as u64;

/// The longest a wait for a signal is made again (see the module's comment).
const SIGNAL_WAIT_BOUND: libc::timespec = libc::timespec { tv_sec: 1, tv_nsec: 0 };

/// How an interrupted call is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// With `restart_syscall`: the kernel's record of the call.
    Restart,
    /// `ppoll` again, its mask (argument 3) the program's where it gives none.
    Ppoll,
    /// `pselect6` again, likewise (argument 5 points to the mask and its size).
    Pselect6,
    /// `rt_sigsuspend` again, with its mask (argument 0), as a bounded `ppoll`.
    Sigsuspend,
    /// `pause` again, with the program's mask, as a bounded `ppoll`.
    Pause,
    /// `rt_sigtimedwait` again, with a bounded timeout.
    Sigwaitinfo,
    /// The same call again, with the same arguments.
    Again,
}

/// How call `nr` with arguments `args`, ended by a signal with `EINTR`, is resumed, if it is.
fn resume_of(nr: i64, args: &[u64; 6]) -> Option<Resume> {
    const TIMER_ABSTIME: u64 = 1;
    // `futex`'s operation without its private and clock flags.
    let futex_op = args[1] as i32 & !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
    match nr {
        libc::SYS_nanosleep => Some(Resume::Restart),
        libc::SYS_clock_nanosleep if args[1] & TIMER_ABSTIME == 0 => Some(Resume::Restart),
        libc::SYS_clock_nanosleep => Some(Resume::Again),
        // Without a timeout the kernel restarts the wait itself (the handler is `SA_RESTART`).
        libc::SYS_futex if matches!(futex_op, libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET) && args[3] != 0 => {
            Some(Resume::Restart)
        }
        libc::SYS_poll if args[2] as i32 >= 0 => Some(Resume::Restart),
        libc::SYS_ppoll if args[2] != 0 => Some(Resume::Ppoll),
        libc::SYS_pselect6 if args[4] != 0 => Some(Resume::Pselect6),
        libc::SYS_rt_sigsuspend => Some(Resume::Sigsuspend),
        libc::SYS_pause => Some(Resume::Pause),
        libc::SYS_rt_sigtimedwait if args[2] == 0 => Some(Resume::Sigwaitinfo),
        _ => None,
    }
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
    let Some(how) = resume_of(nr, &args) else { return };
    // The safepoint signal stays blocked: another safepoint's would end the wait again. Only
    // the one in use: the other may be the program's own.
    let keep_out = 1u64 << (crate::safepoint::safepoint_signal() - 1);
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
        Resume::Ppoll => {
            let mask = mask_at(args[3]).unwrap_or(program) | keep_out;
            args[3] = &mask as *const u64 as u64;
            args[4] = 8;
            // SAFETY: the program's own call, made again from its thread with its arguments
            // (its memory as the program left it), the mask replaced by one on this frame.
            unsafe { sys::raw_syscall6(libc::SYS_ppoll, args) }
        }
        Resume::Sigsuspend | Resume::Pause => {
            let given = if how == Resume::Sigsuspend { mask_at(args[0]) } else { None };
            let mask = given.unwrap_or(program) | keep_out;
            let bound = SIGNAL_WAIT_BOUND;
            let wait = [0, 0, &bound as *const libc::timespec as u64, &mask as *const u64 as u64, 8, 0];
            // SAFETY: a `ppoll` of no descriptor, its timeout and mask on this frame: the
            // program's wait for a signal, bounded.
            match unsafe { sys::raw_syscall6(libc::SYS_ppoll, wait) } {
                0 => EINTR as i64,
                ended => ended,
            }
        }
        Resume::Sigwaitinfo => {
            let bound = SIGNAL_WAIT_BOUND;
            args[2] = &bound as *const libc::timespec as u64;
            sys::set_signal_mask(program | keep_out);
            // SAFETY: the program's own call, made again from its thread with its arguments
            // (its memory as the program left it), with a timeout on this frame.
            match unsafe { sys::raw_syscall6(libc::SYS_rt_sigtimedwait, args) } {
                r if r == -i64::from(libc::EAGAIN) => EINTR as i64,
                r => r,
            }
        }
        Resume::Pselect6 => {
            let given = mask_at(args[5]).and_then(mask_at);
            let mask = given.unwrap_or(program) | keep_out;
            let with_size: [u64; 2] = [&mask as *const u64 as u64, 8];
            args[5] = with_size.as_ptr() as u64;
            // SAFETY: as for `ppoll`; `pselect6`'s last argument points to a mask and its
            // size, both on this frame.
            unsafe { sys::raw_syscall6(libc::SYS_pselect6, args) }
        }
    };
    ctx.set_greg(libc::REG_RAX, result as u64);
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
        let args = |second: u64, third: u64, fifth: u64| [0, second, third, 0, fifth, 0];
        assert_eq!(resume_of(libc::SYS_nanosleep, &args(0, 0, 0)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_clock_nanosleep, &args(0, 0, 0)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_clock_nanosleep, &args(1, 0, 0)), Some(Resume::Again), "absolute");
        assert_eq!(resume_of(libc::SYS_poll, &args(0, 10, 0)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_poll, &args(0, u32::MAX as u64, 0)), None, "no timeout");
        assert_eq!(resume_of(libc::SYS_ppoll, &args(0, 0x1000, 0)), Some(Resume::Ppoll));
        assert_eq!(resume_of(libc::SYS_ppoll, &args(0, 0, 0)), None, "no timeout");
        assert_eq!(resume_of(libc::SYS_pselect6, &args(0, 0, 0x1000)), Some(Resume::Pselect6));
        assert_eq!(resume_of(libc::SYS_pselect6, &args(0, 0, 0)), None, "no timeout");
        assert_eq!(resume_of(libc::SYS_rt_sigsuspend, &args(8, 0, 0)), Some(Resume::Sigsuspend));
        assert_eq!(resume_of(libc::SYS_pause, &args(0, 0, 0)), Some(Resume::Pause));
        assert_eq!(resume_of(libc::SYS_rt_sigtimedwait, &args(0, 0, 0)), Some(Resume::Sigwaitinfo), "sigwaitinfo");
        assert_eq!(resume_of(libc::SYS_rt_sigtimedwait, &args(0, 0x1000, 0)), None, "with a timeout");
        assert_eq!(resume_of(libc::SYS_epoll_wait, &args(0, 0, 0)), None);
        assert_eq!(resume_of(libc::SYS_read, &args(0, 0, 0)), None);
        assert_eq!(resume_of(libc::SYS_futex, &args(0, 0, 0)), None, "a wait without a timeout");
        let futex = |op: i32, timeout: u64| [0, op as u64, 0, timeout, 0, 0];
        assert_eq!(resume_of(libc::SYS_futex, &futex(libc::FUTEX_WAIT, 0x1000)), Some(Resume::Restart));
        let bitset = libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME;
        assert_eq!(resume_of(libc::SYS_futex, &futex(bitset, 0x1000)), Some(Resume::Restart));
        assert_eq!(resume_of(libc::SYS_futex, &futex(libc::FUTEX_WAKE, 0x1000)), None, "no wait");
        assert_eq!(resume_of(libc::SYS_futex, &futex(libc::FUTEX_LOCK_PI, 0x1000)), None, "not a plain wait");
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

    /// `SIGUSR1` blocked in the calling thread, as a program that waits for it does.
    fn block_usr1() -> libc::sigset_t {
        // SAFETY: a set filled by sigemptyset, then the thread's own mask changed.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
            set
        }
    }

    #[test]
    fn waits_for_a_signal_ended_by_the_safepoints_go_on_until_the_programs_signal() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
        handle_usr1();
        fn sigsuspend() -> i32 {
            block_usr1();
            // SAFETY: an empty set: every signal let in while it waits.
            unsafe {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigsuspend(&none)
            }
        }
        fn pause() -> i32 {
            // SAFETY: no argument.
            unsafe { libc::pause() }
        }
        fn sigwaitinfo() -> i32 {
            let set = block_usr1();
            // SAFETY: a valid set; no information asked for.
            unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) }
        }
        // Each ends at the program's SIGUSR1, 100 ms after dprobe's signal: `sigwaitinfo` with
        // its number, the others with EINTR after its handler.
        for (name, wait, ends_with) in [
            ("sigsuspend", sigsuspend as fn() -> i32, (-1, libc::EINTR)),
            ("pause", pause, (-1, libc::EINTR)),
            ("sigwaitinfo", sigwaitinfo, (libc::SIGUSR1, 0)),
        ] {
            let (result, errno, took) = interrupted(wait, |thread| {
                std::thread::sleep(Duration::from_millis(100));
                // SAFETY: a signal to a live thread of this process, whose handler is installed.
                unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
            });
            let errno = if result == -1 { errno } else { 0 };
            assert_eq!((result, errno), ends_with, "{name} after {took:?}");
            assert!(took >= Duration::from_millis(140), "{name} ended before the program's signal: {took:?}");
        }
    }

    /// Made again for at most [`SIGNAL_WAIT_BOUND`]: where a handler of the program's ran
    /// before dprobe's, the wakeup it was does not come again.
    #[test]
    fn a_wait_for_a_signal_made_again_ends_after_its_bound() {
        if !wrappers_name_their_calls() {
            return eprintln!("skipped: this C library makes its calls through one function");
        }
        fn sigsuspend() -> i32 {
            block_usr1();
            // SAFETY: a set of SIGUSR1 alone, which never comes: the wait ends at its bound.
            unsafe {
                let mut usr1: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut usr1);
                libc::sigaddset(&mut usr1, libc::SIGUSR1);
                libc::sigsuspend(&usr1)
            }
        }
        let (result, errno, took) = interrupted(sigsuspend, |_| {});
        assert_eq!((result, errno), (-1, libc::EINTR), "after {took:?}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "bounded: {took:?}");
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
