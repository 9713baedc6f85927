//! dprobe's own work never hits the user's probes: registering and unregistering read
//! `/proc/self/maps` (an `open`) and may ask for the process id, and the program's figures
//! must not count them. One test alone in its process: nothing else calls these functions.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, register_kretprobe, Kprobe, Kretprobe, PreAction};

#[test]
fn registering_and_unregistering_hit_none_of_the_users_probes() {
    static OPENS: AtomicU64 = AtomicU64::new(0);
    static GETPID_RETURNS: AtomicU64 = AtomicU64::new(0);
    let open = register(Kprobe::symbol("open64").pre(|_| {
        OPENS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let getpid = register_kretprobe(Kretprobe::symbol("getpid").handler(|_, _| {
        GETPID_RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    for _ in 0..3 {
        // SAFETY: getpid has no preconditions.
        std::hint::black_box(unsafe { libc::getpid() });
    }
    drop(getpid);
    drop(open);
    assert_eq!(GETPID_RETURNS.load(Relaxed), 3, "the program's three calls, not dprobe's");
    assert_eq!(OPENS.load(Relaxed), 0, "dprobe's own opens of /proc/self/maps are not the program's");
    // The program's own open still counts.
    let open = register(Kprobe::symbol("open64").pre(|_| {
        OPENS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    drop(std::fs::File::open("/proc/self/status").unwrap());
    drop(open);
    assert_eq!(OPENS.load(Relaxed), 1);

    // Only the registering thread's own work is left out: another thread's calls made while
    // probes come and go all count.
    GETPID_RETURNS.store(0, Relaxed);
    let getpid = register_kretprobe(Kretprobe::symbol("getpid").handler(|_, _| {
        GETPID_RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    let caller = std::thread::spawn(|| {
        for _ in 0..20_000 {
            // SAFETY: getpid has no preconditions.
            std::hint::black_box(unsafe { libc::getpid() });
        }
    });
    // At least once, and as long as the other thread calls.
    loop {
        drop(register(Kprobe::symbol("open64").pre(|_| PreAction::Continue)).unwrap());
        if caller.is_finished() {
            break;
        }
    }
    caller.join().unwrap();
    drop(getpid);
    assert_eq!(GETPID_RETURNS.load(Relaxed), 20_000, "every call of the other thread");
}
