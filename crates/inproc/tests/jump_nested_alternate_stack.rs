//! A thread interrupted inside a window by a handler on its own stack, whose handler was in
//! turn interrupted by one on the thread's alternate stack, is parked there while the jump goes
//! live: the safepoint that runs on the alternate stack must follow the frames back to the
//! thread's own stack and move the place saved there into the detour's copy, or the first
//! handler would return into the middle of the jump's bytes.
mod fixtures;
use fixtures::{addr, call2, code, fx_push_push_mov, signal_until_parked};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

/// Where the first handler parks the thread: strictly inside the window (after `push rbp`).
static PARK_AT: AtomicU64 = AtomicU64::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
/// The first handler's frame and the second one's stack pointer, as they saw them.
static OUTER_RSP: AtomicU64 = AtomicU64::new(0);
static INNER_RSP: AtomicU64 = AtomicU64::new(0);
/// The worker's alternate stack: its start and end.
static ALTERNATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// SIGUSR1, on the thread's own stack: inside the window, raise SIGUSR2 once.
extern "C" fn outer(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes the interrupted context.
    let rip = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] } as u64;
    if rip == PARK_AT.load(SeqCst) && !PARKED.load(SeqCst) {
        OUTER_RSP.store(uc as u64, SeqCst);
        // SAFETY: raise is async-signal-safe; SIGUSR2's handler is installed.
        unsafe { libc::raise(libc::SIGUSR2) };
    }
}

/// SIGUSR2, on the alternate stack: hold the thread until the test releases it.
extern "C" fn inner(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    INNER_RSP.store(uc as u64, SeqCst);
    PARKED.store(true, SeqCst);
    while !RELEASE.load(SeqCst) {
        std::hint::spin_loop();
    }
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void), flags: i32) {
    // SAFETY: a valid action for a signal nothing else in this test binary uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

#[test]
fn a_place_in_the_window_saved_on_the_threads_stack_under_a_handler_on_its_alternate_stack_is_moved() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let a = addr(fx_push_push_mov);
    let original = code(a, 5);
    PARK_AT.store(a.0 + 1, SeqCst);
    install(libc::SIGUSR1, outer, 0);
    install(libc::SIGUSR2, inner, libc::SA_ONSTACK);
    const AFTER: u64 = 10_000;
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
            if call2(fx_push_push_mov, i, 1) != i + 14 {
                return Err(i);
            }
            i += 1;
        }
        for k in 0..AFTER {
            if call2(fx_push_push_mov, k, k) != 2 * k + 13 {
                return Err(k);
            }
        }
        Ok(i)
    });
    let tid = rx.recv().unwrap();
    signal_until_parked(&worker, tid, a.0 + 1, libc::SIGUSR1, &PARKED);
    let (outer_frame, inner_frame) = (OUTER_RSP.load(SeqCst), INNER_RSP.load(SeqCst));
    let alternate = ALTERNATE[0].load(SeqCst)..ALTERNATE[1].load(SeqCst);
    assert!(
        alternate.contains(&inner_frame) && !alternate.contains(&outer_frame),
        "the second handler runs on the alternate stack, the first on the thread's own"
    );

    let p = register(Kprobe::addr(a).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the parked place is moved, so the jump goes in");
    assert_eq!(code(a, 1), [0xe9]);
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("the parked call and every later one computed the right value");
    assert!(calls > 0);
    // The parked call entered before the probe existed: only the later ones are hits.
    assert_eq!((HITS.load(Relaxed), p.hits(), p.nmissed()), (AFTER, AFTER, 0));
    drop(p);
    assert_eq!(code(a, 5), original, "original bytes back");
}
