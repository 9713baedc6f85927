//! A site keeps the detour of each kind (with and without the post block): when post-handlers
//! come or go, the jump goes back to the one built before, even while a thread is parked
//! inside it (a detour a thread may be in can be taken back as it is: its code is the same).
mod fixtures;
use fixtures::{addr, call2, call_park_until, code, fx_park, signal_until_parked};

use dprobe_arch::DETOUR_ENTRY;
use dprobe_inproc::{register, Addr, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// Where the detour the jump at `a` leads to starts.
fn detour_of(a: Addr) -> u64 {
    let bytes = code(a, 5);
    assert_eq!(bytes[0], 0xe9, "a jump at {a}");
    let rel = i32::from_le_bytes(bytes[1..5].try_into().unwrap());
    (a.0 + 5).wrapping_add(rel as i64 as u64) - DETOUR_ENTRY
}

/// Bytes of a detour that a parked program counter may be in.
const DETOUR_BYTES: u64 = 160;

static DETOUR: AtomicU64 = AtomicU64::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
static POSTS: AtomicU64 = AtomicU64::new(0);

/// SIGUSR1 in the calling thread: when it interrupted the thread inside the detour, wait there
/// until the test says so.
extern "C" fn park(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes the interrupted context.
    let rip = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] } as u64;
    let detour = DETOUR.load(SeqCst);
    if (detour..detour + DETOUR_BYTES).contains(&rip) && !PARKED.load(SeqCst) {
        PARKED.store(true, SeqCst);
        while !RELEASE.load(SeqCst) {
            std::hint::spin_loop();
        }
    }
}

#[test]
fn post_handlers_that_come_and_go_take_back_the_detour_a_parked_thread_is_in() {
    let a = addr(fx_park);
    let original = code(a, 8);
    let pre = register(Kprobe::addr(a).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pre.optimized(), Ok(()));
    let plain = detour_of(a);
    DETOUR.store(plain, SeqCst);
    // SAFETY: installs a handler for SIGUSR1, which nothing else in this test binary uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = park as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()), 0);
    }
    const AFTER: u64 = 1_000;
    let (worker, _) = call_park_until(&RELEASE, AFTER);
    signal_until_parked(&worker, libc::SIGUSR1, &PARKED);

    // While the thread is parked in the plain detour, a post-handler comes and goes twice.
    let mut with_post = None;
    for round in 0..2 {
        let post = register(Kprobe::addr(a).post(|_| {
            POSTS.fetch_add(1, SeqCst);
        }))
        .unwrap();
        assert_eq!(post.optimized(), Ok(()));
        let d = detour_of(a);
        assert_ne!(d, plain, "round {round}: the post-handler's detour has the post block");
        assert_eq!(*with_post.get_or_insert(d), d, "round {round}: the detour with the post block, taken back");
        assert_eq!(call2(fx_park, 1, 2), 6);
        drop(post);
        assert_eq!(detour_of(a), plain, "round {round}: the plain detour, taken back with the thread inside it");
        assert_eq!(call2(fx_park, 1, 2), 6);
    }
    assert_eq!(POSTS.load(SeqCst), 2);

    // The thread leaves the detour and finishes its call there, then calls on.
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("the parked call and every later one computed the right value");
    assert!(calls > 0);
    assert_eq!(pre.hits(), calls + AFTER + 4, "the worker's calls (the parked one among them) and this thread's");
    drop(pre);
    assert_eq!(code(a, 8), original);
}
