//! A thread that blocks every signal, hitting a probe on `int3`: the trap is a forced
//! `SIGTRAP`, and the kernel kills a thread whose forced signal is blocked. With
//! `keep_traps_open`, `pthread_sigmask` and `sigprocmask` leave `SIGTRAP` out of the masks they
//! set, and the thread's hits run as any other's.
mod fixtures;
use fixtures::fx_mov_add;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{keep_traps_open, register, Kprobe, PreAction};

static HITS: AtomicU64 = AtomicU64::new(0);

/// The calling thread's blocked signals, as the kernel has them.
fn mask() -> u64 {
    // SAFETY: reads the mask into a zeroed set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set), 0);
        set
    };
    // SAFETY: the first 8 bytes of a sigset_t are the kernel's mask.
    unsafe { std::ptr::read((&set as *const libc::sigset_t).cast::<u64>()) }
}

/// Block every signal with `pthread_sigmask` (or `sigprocmask`), then call the probed function
/// 100 times: `(the calls' sum, the mask while blocked)`.
fn blocked_calls(with_sigprocmask: bool) -> (u64, u64) {
    // SAFETY: blocks every signal in this thread only; the fixture adds.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let set = if with_sigprocmask {
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut())
        } else {
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut())
        };
        assert_eq!(set, 0);
        let blocked = mask();
        let sum = (0..100u64).map(|i| fx_mov_add(i, 1)).sum();
        (sum, blocked)
    }
}

#[test]
fn a_thread_that_blocks_every_signal_takes_its_int3_hits() {
    let p = fixtures::counting_int3_probe(&HITS);
    // Without it, in a child: killed at its first hit.
    // SAFETY: the child only blocks signals and calls the fixture, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        blocked_calls(false);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTRAP, "status {status:#x}");
    let guard = keep_traps_open().unwrap();
    // Another probe on `pthread_sigmask` still sees every call: the function runs.
    static MASK_CALLS: AtomicU64 = AtomicU64::new(0);
    let other = register(Kprobe::symbol("libc:pthread_sigmask").pre(|_| {
        MASK_CALLS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    for with_sigprocmask in [false, true] {
        let (sum, blocked) = std::thread::spawn(move || blocked_calls(with_sigprocmask)).join().unwrap();
        assert_eq!(sum, (0..100).map(|i| i + 1).sum::<u64>());
        let trap = 1u64 << (libc::SIGTRAP - 1);
        let usr1 = 1u64 << (libc::SIGUSR1 - 1);
        assert_eq!((blocked & trap, blocked & usr1), (0, usr1), "everything blocked but SIGTRAP: {blocked:#x}");
    }
    // Each thread's blocking call, and its `mask` query (others' calls count too).
    assert!(MASK_CALLS.load(Relaxed) >= 4, "{}", MASK_CALLS.load(Relaxed));
    drop(other);
    // A set of `SIGTRAP` alone (a program that waits for it with `sigwait`) is kept.
    let only_trap = std::thread::spawn(|| {
        // SAFETY: blocks SIGTRAP in this thread only, which hits no probe.
        unsafe {
            let mut trap: libc::sigset_t = std::mem::zeroed();
            libc::sigaddset(&mut trap, libc::SIGTRAP);
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &trap, std::ptr::null_mut()), 0);
        }
        mask()
    });
    assert_eq!(only_trap.join().unwrap() & (1 << (libc::SIGTRAP - 1)), 1 << (libc::SIGTRAP - 1));
    drop(guard);
    assert_eq!(HITS.load(Relaxed), 200);
    assert_eq!(p.hits(), 200);
}
