//! A site keeps the detour of each kind (with and without the post block): when post-handlers
//! come or go, the jump goes back to the one built before, even while a thread is parked
//! inside it (a detour a thread may be in can be taken back as it is: its code is the same).
mod fixtures;
use fixtures::{
    addr, call2, call_park_until, code, detour_of, fx_park, park_in, signal_until_parked, DETOUR_BYTES, PARKED, RELEASE,
};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

static POSTS: AtomicU64 = AtomicU64::new(0);

#[test]
fn post_handlers_that_come_and_go_take_back_the_detour_a_parked_thread_is_in() {
    let a = addr(fx_park);
    let original = code(a, 8);
    let pre = register(Kprobe::addr(a).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pre.optimized(), Ok(()));
    let plain = detour_of(a);
    park_in(plain..plain + DETOUR_BYTES);
    const AFTER: u64 = 1_000;
    let (worker, tid) = call_park_until(&RELEASE, AFTER);
    signal_until_parked(&worker, tid, plain + dprobe_arch::DETOUR_ENTRY, libc::SIGUSR1, &PARKED);

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
