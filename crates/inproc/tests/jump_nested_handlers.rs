//! A thread held five signal handlers deep on its own stack (each handler's frame saves a
//! place on that same stack) does not keep a jump from going in: the safepoint reads its stack
//! once, and follows no frame there to another stack (a frame's saved stack pointer leads
//! elsewhere only from the alternate signal stack).
mod fixtures;
use fixtures::{addr, call2, code, fx_push_push_mov, install_handler};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

const DEPTH: u32 = 5;
static LEVEL: AtomicU32 = AtomicU32::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
/// The worker's calls so far.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Calls the worker makes once released, through the jump.
const AFTER: u64 = 1_000;

/// SIGUSR1, not blocked while it runs: raise it again until [`DEPTH`] handlers are nested,
/// then hold the thread there until the test releases it.
extern "C" fn nest(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if LEVEL.fetch_add(1, SeqCst) + 1 < DEPTH {
        // SAFETY: raise is async-signal-safe; this handler is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        return;
    }
    PARKED.store(true, SeqCst);
    while !RELEASE.load(SeqCst) {
        std::hint::spin_loop();
    }
}

#[test]
fn a_thread_held_five_handlers_deep_on_its_own_stack_lets_the_jump_go_in() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let a = addr(fx_push_push_mov);
    let original = code(a, 5);
    install_handler(libc::SIGUSR1, nest, libc::SA_NODEFER);
    let worker = std::thread::spawn(|| {
        let mut i = 0u64;
        while !RELEASE.load(SeqCst) {
            if call2(fx_push_push_mov, i, 1) != i + 14 {
                return Err(i);
            }
            i += 1;
            CALLS.store(i, SeqCst);
        }
        for k in 0..AFTER {
            if call2(fx_push_push_mov, k, k) != 2 * k + 13 {
                return Err(k);
            }
        }
        Ok(i)
    });
    while CALLS.load(SeqCst) < 100 {
        std::thread::yield_now();
    }
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the worker runs until released; SIGUSR1's handler is installed.
    assert_eq!(unsafe { libc::pthread_kill(worker.as_pthread_t(), libc::SIGUSR1) }, 0);
    while !PARKED.load(SeqCst) {
        std::thread::yield_now();
    }
    assert_eq!(LEVEL.load(SeqCst), DEPTH);

    let p = register(Kprobe::addr(a).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the nested handlers' frames are no reason to stay on int3");
    assert_eq!(code(a, 1), [0xe9]);
    assert_eq!(call2(fx_push_push_mov, 2, 3), 18);
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("every call computed the right value");
    assert!(calls > 0);
    // The main thread's call, the worker's after it was released, and the one it was held in
    // if that had not yet entered the function.
    let hits = HITS.load(Relaxed);
    assert!((AFTER + 1..=AFTER + 2).contains(&hits), "{hits} hits");
    assert_eq!((p.hits(), p.nmissed()), (hits, 0));
    drop(p);
    assert_eq!(code(a, 5), original, "original bytes back");
}
