//! A program's signal handler installed with `SA_ONSTACK` runs on the thread's alternate
//! stack, often small: Rust's std gives each thread one of `SIGSTKSZ` (8 KiB here), C programs
//! use `SIGSTKSZ` too. A probe's trap taken there pushes the kernel's signal frame and runs
//! dprobe's hit path on that same stack, below the program's handler and its own frame. On a
//! `SIGSTKSZ` stack every hit must run its handlers and the program go on unharmed; a stack
//! whose use grows past that (a bigger frame on the hit path) fails here first.
//!
//! Measured with this test's child (a counting pre-handler, a probe on int3), the stack sizes
//! the trap path fits on (below, the stack overflows):
//! - a CPU whose kernel signal frame is small (no PKRU in its XSAVE area; the kernel's two
//!   frames take most of 3 KiB): 4 KiB in a release build, 7 KiB unoptimized;
//! - an AMD EPYC whose XSAVE area holds PKRU (`AT_MINSIGSTKSZ` 3,376: the two frames take
//!   6.8 KiB): 7 KiB in a release build, 8 KiB with the hit path's crates at opt-level 1 (the
//!   workspace's dev profile, see Cargo.toml), 10 KiB unoptimized. The jump path, with one
//!   kernel frame, fits on 6 KiB in every build.
mod fixtures;
use fixtures::{addr, fx_push_add};

use dprobe_inproc::{register, Kprobe, PreAction, Probe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Calls of the probed function from the signal handler, and the wrong results among them.
static CALLS: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    let n = CALLS.fetch_add(1, Relaxed);
    // SAFETY: fx_push_add is a plain function of two integers.
    if unsafe { fx_push_add(std::hint::black_box(n), 1) } != n + 1 {
        WRONG.fetch_add(1, Relaxed);
    }
}

const SIGNALS: u64 = 200;

/// In a child process: an alternate stack of `size` bytes with an inaccessible page below it
/// (as Rust's std maps them), SIGUSR2 handled there by `on_signal`, raised [`SIGNALS`]
/// times. The child exits 0 when every call computed the right value and the probe counted
/// each as a hit or as missed, else 1; `(the child's wait status, hits, missed)` as the child
/// saw them, through a pipe.
fn in_child_on_alternate_stack(p: &Probe, size: usize) -> (libc::c_int, u64, u64) {
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
            let ss = libc::stack_t { ss_sp: base.cast::<u8>().add(page).cast(), ss_flags: 0, ss_size: size };
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK;
            if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0
                || libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) != 0
            {
                libc::_exit(2);
            }
            for _ in 0..SIGNALS {
                libc::raise(libc::SIGUSR2);
            }
            let figures = [p.hits(), p.nmissed()];
            libc::write(fds[1], figures.as_ptr().cast(), 16);
            let counted = p.hits() + p.nmissed() == SIGNALS;
            libc::_exit(if CALLS.load(Relaxed) == SIGNALS && WRONG.load(Relaxed) == 0 && counted { 0 } else { 1 });
        }
    }
    let mut status = 0;
    let mut figures = [u64::MAX; 2];
    // SAFETY: our pipe and child.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], figures.as_mut_ptr().cast(), 16);
        libc::close(fds[0]);
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    (status, figures[0], figures[1])
}

#[test]
fn every_hit_in_a_handler_on_a_sigstksz_alternate_stack_runs_its_handlers() {
    // Through the trap (the kernel's frame on that stack) and through the jump (the stub's).
    for trap in [true, false] {
        let probe = Kprobe::addr(addr(fx_push_add)).pre(|_| PreAction::Continue);
        let p = register(if trap { probe.no_optimize() } else { probe }).unwrap();
        assert_eq!(fixtures::code(addr(fx_push_add), 1), [if trap { 0xcc } else { 0xe9 }]);
        for size in [libc::SIGSTKSZ, 256 << 10] {
            let (status, hits, missed) = in_child_on_alternate_stack(&p, size);
            let what = format!("{} KiB, {}", size >> 10, if trap { "trap" } else { "jump" });
            assert!(libc::WIFEXITED(status), "{what}: the program was killed by signal {}", libc::WTERMSIG(status));
            assert_eq!(libc::WEXITSTATUS(status), 0, "{what}: a wrong result or count");
            assert_eq!((hits, missed), (SIGNALS, 0), "{what}: every call a hit");
        }
    }
}
