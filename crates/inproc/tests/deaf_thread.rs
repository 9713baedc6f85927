//! A thread that blocks the safepoint signal for good: the first jump that needs a safepoint
//! waits its whole patience for it, and stays on `int3`; a later one gives up as soon as it
//! finds the thread still blocking the signal (the agent's start places several such probes).
//! Once the thread takes the signal again, jumps are made again.
mod fixtures;
use fixtures::{addr, call2, fx_mov_add, fx_push_add, fx_push_push_mov};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

static HITS: AtomicU64 = AtomicU64::new(0);

fn counting(f: unsafe extern "C" fn(u64, u64) -> u64) -> dprobe_inproc::Probe {
    register(Kprobe::addr(addr(f)).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap()
}

/// Block (`true`) or unblock the safepoint signal in this thread: `SIGURG`, which this program
/// leaves to its default (`dprobe_inproc::safepoint_signal`).
fn safepoint_signal_blocked(blocked: bool) {
    // SAFETY: a signal set on this frame, filled before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGURG);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

#[test]
fn a_thread_deaf_to_safepoints_is_waited_for_once() {
    static DEAF: AtomicBool = AtomicBool::new(true);
    static LISTENING: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    // Spins in user code (a thread in a system call is examined, not signalled), the signal
    // blocked until told otherwise.
    let spinner = std::thread::spawn(move || {
        safepoint_signal_blocked(true);
        tx.send(()).unwrap();
        while DEAF.load(SeqCst) {
            std::hint::spin_loop();
        }
        safepoint_signal_blocked(false);
        LISTENING.store(true, SeqCst);
        while !DONE.load(SeqCst) {
            std::hint::spin_loop();
        }
    });
    rx.recv().unwrap();
    let first = counting(fx_push_push_mov);
    let why = first.optimized().unwrap_err().to_string();
    assert!(why.contains("did not take dprobe's safepoint signal") && why.contains("the signal blocked"), "{why}");
    assert!(!why.contains("earlier safepoint"), "{why}");
    let second = counting(fx_push_add);
    let why = second.optimized().unwrap_err().to_string();
    assert!(why.contains("it blocked it through an earlier safepoint too"), "{why}");
    // Both work on `int3`.
    assert_eq!((call2(fx_push_push_mov, 1, 2), call2(fx_push_add, 1, 2)), (16, 3));
    assert_eq!((first.hits(), second.hits()), (1, 1));
    DEAF.store(false, SeqCst);
    while !LISTENING.load(SeqCst) {
        std::thread::yield_now();
    }
    let third = counting(fx_mov_add);
    assert_eq!(third.optimized(), Ok(()), "the thread answers safepoints again");
    assert_eq!(call2(fx_mov_add, 1, 2), 3);
    assert_eq!((third.hits(), HITS.load(Relaxed)), (1, 3));
    DONE.store(true, SeqCst);
    spinner.join().unwrap();
}
