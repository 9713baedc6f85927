//! A thread interrupted by a handler on its own stack, whose handler was in turn interrupted by
//! one on the thread's alternate stack, is held there while dprobe changes code. The place the
//! first handler returns to is saved on the thread's own stack, which the safepoint, running on
//! the alternate stack, must follow the frames back to:
//! - a place inside a window is moved into the detour's copy when the jump goes in, or the
//!   first handler would return into the middle of the jump's bytes;
//! - a place inside a retired detour keeps that detour from going to another probe, or the
//!   first handler would return into another probe's code.
//!
//! (With `SS_AUTODISARM` the first handler's delivery disarms the alternate stack, and the
//! second runs on the thread's own stack too: `signal_frame.rs` tests how a frame on a disarmed
//! alternate stack is known.)
mod fixtures;
use fixtures::{addr, call2, code, detour_of, fx_park, fx_push_push_mov, install_handler, signal_until_parked};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

std::arch::global_asm!(
    ".text",
    ".globl fxn_b",
    ".type fxn_b,@function",
    "fxn_b:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxn_b, . - fxn_b",
);

extern "C" {
    fn fxn_b(a: u64, b: u64) -> u64;
}

/// Where the first handler holds the thread: the place it interrupted must be this one.
static PARK_AT: AtomicU64 = AtomicU64::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
/// The first handler's frame and the second one's, as they saw them.
static OUTER_FRAME: AtomicU64 = AtomicU64::new(0);
static INNER_FRAME: AtomicU64 = AtomicU64::new(0);
/// The worker's alternate stack: its start and end.
static ALTERNATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Calls the worker makes once released.
const AFTER: u64 = 10_000;

/// SIGUSR1, on the thread's own stack: at the place, raise SIGUSR2 once.
extern "C" fn outer(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes the interrupted context.
    let rip = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] } as u64;
    if rip == PARK_AT.load(SeqCst) && !PARKED.load(SeqCst) {
        OUTER_FRAME.store(uc as u64, SeqCst);
        // SAFETY: raise is async-signal-safe; SIGUSR2's handler is installed.
        unsafe { libc::raise(libc::SIGUSR2) };
    }
}

/// SIGUSR2, on the alternate stack: hold the thread until the test releases it.
extern "C" fn inner(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    INNER_FRAME.store(uc as u64, SeqCst);
    PARKED.store(true, SeqCst);
    while !RELEASE.load(SeqCst) {
        std::hint::spin_loop();
    }
}

/// One case at a time: the handlers and the statics are the test binary's.
fn alone() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    PARKED.store(false, SeqCst);
    RELEASE.store(false, SeqCst);
    install_handler(libc::SIGUSR1, outer, 0);
    install_handler(libc::SIGUSR2, inner, libc::SA_ONSTACK);
    guard
}

/// A worker with an alternate stack: it calls `f(i, 1)` until released, then
/// `f(k, k)` [`AFTER`] times, checking that each returns its arguments' sum plus `plus`. Its
/// handle (the calls made before release, or the argument of a wrong result) and its id.
fn worker(f: unsafe extern "C" fn(u64, u64) -> u64, plus: u64) -> (std::thread::JoinHandle<Result<u64, u64>>, i32) {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        // The alternate stack, leaked: the thread's last handler may still run on it.
        let alternate: &'static mut [u8] = Box::leak(vec![0u8; 64 << 10].into_boxed_slice());
        let start = alternate.as_ptr() as u64;
        ALTERNATE[0].store(start, SeqCst);
        ALTERNATE[1].store(start + alternate.len() as u64, SeqCst);
        let stack = libc::stack_t { ss_sp: alternate.as_mut_ptr().cast(), ss_flags: 0, ss_size: alternate.len() };
        // SAFETY: installs a stack that lives for the rest of the process.
        assert_eq!(unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) }, 0);
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let mut i = 0u64;
        while !RELEASE.load(SeqCst) {
            if call2(f, i, 1) != i + 1 + plus {
                return Err(i);
            }
            i += 1;
        }
        for k in 0..AFTER {
            if call2(f, k, k) != 2 * k + plus {
                return Err(k);
            }
        }
        Ok(i)
    });
    (worker, rx.recv().unwrap())
}

/// Hold `worker` (thread `tid`) at `at` under the two handlers, each on its stack.
fn hold(worker: &std::thread::JoinHandle<Result<u64, u64>>, tid: i32, at: u64) {
    PARK_AT.store(at, SeqCst);
    signal_until_parked(worker, tid, at, libc::SIGUSR1, &PARKED);
    let alternate = ALTERNATE[0].load(SeqCst)..ALTERNATE[1].load(SeqCst);
    let (outer, inner) = (OUTER_FRAME.load(SeqCst), INNER_FRAME.load(SeqCst));
    assert!(
        alternate.contains(&inner) && !alternate.contains(&outer),
        "the second handler runs on the alternate stack, the first on the thread's own: \
         {outer:#x} {inner:#x} {alternate:x?}"
    );
}

/// A place inside the window (after `fx_push_push_mov`'s `push rbp`) is moved into the
/// detour's copy: the held call and every later one compute their value, and only the later
/// ones are hits.
fn window_place_moved() {
    let _alone = alone();
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let a = addr(fx_push_push_mov);
    let original = code(a, 5);
    let (worker, tid) = worker(fx_push_push_mov, 13);
    hold(&worker, tid, a.0 + 1);
    let counted = hits.clone();
    let p = register(Kprobe::addr(a).pre(move |_| {
        counted.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the held place is moved, so the jump goes in");
    assert_eq!(code(a, 1), [0xe9]);
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("the held call and every later one computed the right value");
    assert!(calls > 0);
    assert_eq!((hits.load(Relaxed), p.hits(), p.nmissed()), (AFTER, AFTER, 0));
    drop(p);
    assert_eq!(code(a, 5), original, "original bytes back");
}

/// A place inside a detour retired meanwhile keeps it from another probe until the thread
/// has left it: the held call finishes through it, with the right value.
fn retired_detour_kept() {
    let _alone = alone();
    let (a, b) = (addr(fx_park), addr(fxn_b));
    let original = [code(a, 8), code(b, 8)];
    let pa = register(Kprobe::addr(a).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pa.optimized(), Ok(()));
    let detour_a = detour_of(a);
    let (worker, tid) = worker(fx_park, 3);
    hold(&worker, tid, detour_a + dprobe_arch::DETOUR_ENTRY);
    pa.unregister().unwrap();
    let pb = register(Kprobe::addr(b).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pb.optimized(), Ok(()));
    assert_ne!(detour_of(b), detour_a, "a detour given to another probe while a thread's place in it is saved");
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("the held call and every later one computed the right value");
    assert!(calls > 0);
    assert_eq!((call2(fxn_b, 3, 4), pb.hits()), (7, 1));
    drop(pb);
    assert_eq!([code(a, 8), code(b, 8)], original, "original bytes back");
}

#[test]
fn a_place_in_the_window_saved_under_a_handler_on_the_alternate_stack_is_moved() {
    window_place_moved();
}

#[test]
fn a_place_in_a_retired_detour_saved_under_a_handler_on_the_alternate_stack_keeps_it() {
    retired_detour_kept();
}
