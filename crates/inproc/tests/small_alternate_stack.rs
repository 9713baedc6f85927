//! A program's signal handler installed with `SA_ONSTACK` runs on the thread's alternate
//! stack, often small: Rust's std gives each thread one of `SIGSTKSZ` (8 KiB here), C programs
//! use `SIGSTKSZ` too. A probe's trap taken there pushes the kernel's signal frame on that same
//! stack, below the program's handler and its own frame; dprobe's hit path then moves to a
//! stack of its own (`hit_stack.rs`), and the user's handlers run there; so does a jump's
//! dispatch, and a return's through dprobe's trampoline. On a `SIGSTKSZ` stack every hit must
//! run its handlers and the program go on unharmed, whatever stack the handlers need.
//!
//! Measured with this test's child (a counting pre-handler, a probe on int3) on an AMD EPYC
//! whose XSAVE area holds PKRU (`AT_MINSIGSTKSZ` 3,376: the kernel's two frames take 6.8 KiB),
//! the stack sizes that fit (below, the stack overflows): the trap path 7 KiB, in a release
//! build and at the workspace's opt-level 1 alike (before the hit path moved off the
//! alternate stack: 7 KiB in release, 8 KiB at opt-level 1, 10 KiB unoptimized); the jump path,
//! with no kernel frame, 5 KiB. On an Intel Xeon with AVX-512 (the kernel's frame 3.4 KiB as
//! well, the jump's stub keeping `zmm0`-`zmm7` besides), a signal held during a jump's hit path
//! overflowed the 8 KiB stack when let in below the stub's frames: it now comes in once they
//! are gone, as after a trap.
mod fixtures;
use fixtures::{addr, fx_mov_add, fx_push_add};

use dprobe_inproc::{register, register_kretprobe, Kprobe, Kretprobe, PreAction, ReturnMode};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // `a + b`, for the return probe's test (the others probe the fixtures' own, and the tests
    // run at once). Its exit's jump goes on the 5-byte nop before the `ret`, clear of the
    // entry's on the first two instructions.
    ".globl alt_return_add",
    ".type alt_return_add,@function",
    "alt_return_add:",
    "mov rax, rdi",
    "add rax, rsi",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "ret",
    ".size alt_return_add, . - alt_return_add",
    // `a + b`, probed by the `SS_AUTODISARM` test alone (a 5-byte instruction first: a jump).
    ".globl alt_disarmed_add",
    ".type alt_disarmed_add,@function",
    "alt_disarmed_add:",
    "lea rax, [rdi + rsi + 0]",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "ret",
    ".size alt_disarmed_add, . - alt_disarmed_add",
);

extern "C" {
    fn alt_return_add(a: u64, b: u64) -> u64;
    fn alt_disarmed_add(a: u64, b: u64) -> u64;
}

/// The function the child's signal handler calls (`a + b`), set in the child.
static TARGET: AtomicUsize = AtomicUsize::new(0);
/// Calls of the probed function from the signal handler, and the wrong results among them.
static CALLS: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);
/// The program's `SIGURG`s handled (a handler may raise one), and those handled before the
/// hit path that raised them was done.
static URGS: AtomicU64 = AtomicU64::new(0);
static EARLY_URGS: AtomicU64 = AtomicU64::new(0);

type Add = unsafe extern "C" fn(u64, u64) -> u64;

extern "C" fn on_signal(_: libc::c_int) {
    let n = CALLS.fetch_add(1, Relaxed);
    // SAFETY: TARGET holds one of the fixtures' `Add` functions, set before any signal.
    let f: Add = unsafe { std::mem::transmute::<usize, Add>(TARGET.load(Relaxed)) };
    // SAFETY: a plain function of two integers.
    if unsafe { f(std::hint::black_box(n), 1) } != n + 1 {
        WRONG.fetch_add(1, Relaxed);
    }
}

extern "C" fn on_urg(_: libc::c_int) {
    URGS.fetch_add(1, Relaxed);
}

const SIGNALS: u64 = 200;

/// In a child process: an alternate stack of `size` bytes with an inaccessible page below it
/// (as Rust's std maps them), SIGUSR2 handled there by `on_signal` calling `target`, raised
/// [`SIGNALS`] times, and SIGURG handled there too. The child exits 0 when every call
/// computed the right value and the probe counted each as a hit or as missed, with its
/// alternate stack and signal mask as they were before (3 and 4 when not) and no SIGURG
/// handled early (5), else 1;
/// `(the child's wait status, hits, missed, SIGURGs handled)` as the child saw them (the
/// probe's `figures`: calls seen, missed), through a pipe.
fn in_child_on_alternate_stack(
    figures: &dyn Fn() -> (u64, u64),
    target: Add,
    size: usize,
) -> (libc::c_int, u64, u64, u64) {
    in_child_on_alternate_stack_with(figures, target, size, 0)
}

/// `SS_AUTODISARM` (not in the libc crate): the kernel disarms the alternate stack while a
/// handler runs on it, and arms it again when the handler returns.
const SS_AUTODISARM: libc::c_int = 1 << 31;

/// [`in_child_on_alternate_stack`] with the alternate stack's flags `flags`. With
/// `SS_AUTODISARM`, the child first calls `target` once outside any handler, as a program that
/// set its stack up at its start runs code before its first signal; that call is not among
/// the figures.
fn in_child_on_alternate_stack_with(
    figures: &dyn Fn() -> (u64, u64),
    target: Add,
    size: usize,
    flags: libc::c_int,
) -> (libc::c_int, u64, u64, u64) {
    let mut fds = [0; 2];
    // SAFETY: a pipe into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes system calls and touches its own copy of memory, then
    // leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: fresh memory for the stack and its guard page; the handler is installed for
        // this single-threaded child.
        unsafe {
            // A program whose stack overflowed inside its alternate stack's handler spins
            // in faults: ended by SIGALRM instead of hanging the test.
            libc::alarm(60);
            let page = 4096;
            let base = libc::mmap(
                std::ptr::null_mut(),
                size + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == libc::MAP_FAILED || libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                libc::_exit(2);
            }
            TARGET.store(target as usize, Relaxed);
            let ss = libc::stack_t { ss_sp: base.cast::<u8>().add(page).cast(), ss_flags: flags, ss_size: size };
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK;
            let mut urg: libc::sigaction = std::mem::zeroed();
            urg.sa_sigaction = on_urg as *const () as usize;
            urg.sa_flags = libc::SA_ONSTACK;
            if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0
                || libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) != 0
                || libc::sigaction(libc::SIGURG, &urg, std::ptr::null_mut()) != 0
            {
                libc::_exit(2);
            }
            let mut mask_before: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask_before);
            let warm_up = flags & SS_AUTODISARM != 0;
            if warm_up && target(1, 2) != 3 {
                libc::_exit(1);
            }
            for _ in 0..SIGNALS {
                libc::raise(libc::SIGUSR2);
            }
            let (seen, missed) = figures();
            let seen = seen.saturating_sub(u64::from(warm_up));
            libc::write(fds[1], [seen, missed, URGS.load(Relaxed)].as_ptr().cast(), 24);
            let mut now = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: -1, ss_size: 0 };
            libc::sigaltstack(std::ptr::null(), &mut now);
            let mut mask_after: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask_after);
            let same_mask =
                (1..=64).all(|sig| libc::sigismember(&mask_before, sig) == libc::sigismember(&mask_after, sig));
            let counted = seen + missed == SIGNALS;
            libc::_exit(if (now.ss_sp, now.ss_size, now.ss_flags) != (ss.ss_sp, size, flags) {
                3
            } else if !same_mask {
                4
            } else if EARLY_URGS.load(Relaxed) != 0 {
                5
            } else if CALLS.load(Relaxed) == SIGNALS && WRONG.load(Relaxed) == 0 && counted {
                0
            } else {
                1
            });
        }
    }
    let mut status = 0;
    let mut figures = [u64::MAX; 3];
    // SAFETY: our pipe and child.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], figures.as_mut_ptr().cast(), 24);
        libc::close(fds[0]);
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    (status, figures[0], figures[1], figures[2])
}

/// The child's exit, as the assertions say it.
fn exited_unharmed(what: &str, status: libc::c_int) {
    fixtures::child_exited_cleanly(
        what,
        status,
        &[
            (1, "a wrong result or count"),
            (2, "the child could not set up its alternate stack"),
            (3, "its alternate stack was not given back"),
            (4, "its signal mask changed"),
            (5, "a signal of its own ran inside the hit path, off its alternate stack"),
        ],
    );
}

#[test]
fn every_hit_in_a_handler_on_a_sigstksz_alternate_stack_runs_its_handlers() {
    // Through the trap (the kernel's frame on that stack) and through the jump (the stub's).
    for trap in [true, false] {
        let probe = Kprobe::addr(addr(fx_push_add)).pre(|_| PreAction::Continue);
        let p = register(if trap { probe.no_optimize() } else { probe }).unwrap();
        assert_eq!(fixtures::code(addr(fx_push_add), 1), [if trap { 0xcc } else { 0xe9 }]);
        for size in [libc::SIGSTKSZ, 256 << 10] {
            let (status, hits, missed, _) = in_child_on_alternate_stack(&|| (p.hits(), p.nmissed()), fx_push_add, size);
            let what = format!("{} KiB, {}", size >> 10, if trap { "trap" } else { "jump" });
            exited_unharmed(&what, status);
            assert_eq!((hits, missed), (SIGNALS, 0), "{what}: every call a hit");
        }
    }
}

/// A handler that needs far more stack than the program's alternate stack has, hit in a signal
/// handler running there: the hit path runs it on a stack of dprobe's, through the trap and
/// through the jump alike. A signal the handler raises (the program's, handled on the
/// alternate stack) is held until the hit path is done, then runs where the program's handler
/// is, above its frames: delivered while the thread is off the alternate stack (before
/// dprobe's stack takes its place), the kernel would put its frame at that stack's top, over
/// the interrupted handler.
#[test]
fn a_handler_deeper_than_the_alternate_stack_runs_off_it_and_the_programs_signals_wait() {
    for trap in [true, false] {
        let probe = Kprobe::addr(addr(fx_mov_add)).pre(|_| {
            let deep = std::hint::black_box([7u8; 64 << 10]);
            std::hint::black_box(&deep);
            let before = URGS.load(Relaxed);
            // SAFETY: a signal to the calling thread, whose handler only counts.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGURG) };
            if URGS.load(Relaxed) != before {
                EARLY_URGS.fetch_add(1, Relaxed);
            }
            PreAction::Continue
        });
        let p = register(if trap { probe.no_optimize() } else { probe }).unwrap();
        assert_eq!(fixtures::code(addr(fx_mov_add), 1), [if trap { 0xcc } else { 0xe9 }]);
        let what = format!("a 64 KiB handler on an 8 KiB alternate stack, {}", if trap { "trap" } else { "jump" });
        let (status, hits, missed, urgs) =
            in_child_on_alternate_stack(&|| (p.hits(), p.nmissed()), fx_mov_add, libc::SIGSTKSZ);
        exited_unharmed(&what, status);
        assert_eq!((hits, missed), (SIGNALS, 0), "{what}: every call a hit");
        assert_eq!(urgs, SIGNALS, "{what}: every signal the handler raised was handled");
    }
}

/// The same for a return handler, whether the return comes back through dprobe's trampoline
/// (its return address replaced) or through a probe on the function's exit.
#[test]
fn a_return_handler_deeper_than_the_alternate_stack_runs_off_it() {
    for via_return_address in [true, false] {
        let k = Kretprobe::addr(addr(alt_return_add));
        let p = register_kretprobe(if via_return_address { k.via_return_address() } else { k }.handler(|_, _| {
            let deep = std::hint::black_box([7u8; 64 << 10]);
            std::hint::black_box(&deep);
        }))
        .unwrap();
        let through_trampoline = matches!(p.return_mode(), ReturnMode::ReturnAddress { .. });
        assert_eq!(through_trampoline, via_return_address, "{:?}", p.return_mode());
        // Where the exits are watched, the entry and the exit are jumps.
        let f = addr(alt_return_add);
        if !via_return_address {
            assert_eq!(fixtures::code(f, 1), [0xe9], "the entry's jump");
            assert_eq!(fixtures::code(f.offset(6), 1), [0xe9], "the exit's jump");
        }
        let what = format!("a 64 KiB return handler on an 8 KiB alternate stack, {:?}", p.return_mode());
        let figures = || {
            let s = p.stats();
            (s.returns, s.missed + s.reentered)
        };
        let (status, returns, missed, _) = in_child_on_alternate_stack(&figures, alt_return_add, libc::SIGSTKSZ);
        exited_unharmed(&what, status);
        assert_eq!((returns, missed), (SIGNALS, 0), "{what}: every return seen");
    }
}

/// The same deep handler on an alternate stack armed with `SS_AUTODISARM`, which the kernel
/// disarms while a handler runs there: no alternate stack is then set, for the kernel or in a
/// trap's frame, and the hit path still moves off it (it saw the stack armed before).
#[test]
fn a_handler_deeper_than_an_autodisarmed_alternate_stack_runs_off_it() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    for trap in [true, false] {
        let probe = Kprobe::addr(addr(alt_disarmed_add)).pre(|_| {
            let deep = std::hint::black_box([7u8; 64 << 10]);
            std::hint::black_box(&deep);
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        });
        let p = register(if trap { probe.no_optimize() } else { probe }).unwrap();
        assert_eq!(fixtures::code(addr(alt_disarmed_add), 1), [if trap { 0xcc } else { 0xe9 }]);
        let what = format!("a 64 KiB handler on an 8 KiB SS_AUTODISARM stack, {}", if trap { "trap" } else { "jump" });
        let (status, hits, missed, _) = in_child_on_alternate_stack_with(
            &|| (p.hits(), p.nmissed()),
            alt_disarmed_add,
            libc::SIGSTKSZ,
            SS_AUTODISARM,
        );
        exited_unharmed(&what, status);
        assert_eq!((hits, missed), (SIGNALS, 0), "{what}: every call a hit");
    }
}
