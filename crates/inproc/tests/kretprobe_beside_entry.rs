//! A return probe placed and removed on a function that a thread calls all along, and whose
//! entry is a jump already (an entry probe's): its exits are armed before its entry counts a
//! call, and its entry stops counting before its exits go. Before, the entry site (a jump)
//! took the return probe's handler at once and the exit's `int3` came after, so every call in
//! between pushed an activation no exit popped: each was found stale by the next call on the
//! same stack word and counted as abandoned, about 2,000 per placing.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

std::arch::global_asm!(
    ".text",
    // A 5-byte nop at the entry (room for the entry's jump), then a leaf's body and its ret.
    ".globl fxb_leaf",
    ".type fxb_leaf,@function",
    "fxb_leaf:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxb_leaf, . - fxb_leaf",
);

extern "C" {
    fn fxb_leaf(a: u64, b: u64) -> u64;
}

#[test]
fn a_return_probe_placed_beside_a_jumping_entry_probe_sees_each_call_it_counts_return() {
    const PLACINGS: u64 = 20;
    let f = addr(fxb_leaf);
    let original = code(f, 10);
    let entries = Arc::new(AtomicU64::new(0));
    let counted = entries.clone();
    let entry = register(Kprobe::addr(f).pre(move |_| {
        counted.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(entry.optimized(), Ok(()), "the entry probe is a jump");
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                assert_eq!(call2(fxb_leaf, i, 1), i + 1);
                i += 1;
            }
        })
    };
    while entries.load(Relaxed) < 10_000 {
        std::thread::yield_now();
    }
    let (mut calls, mut returns, mut abandoned) = (0, 0, 0);
    for _ in 0..PLACINGS {
        let p = register_kretprobe(Kretprobe::addr(f).handler(|_, _| {})).unwrap();
        assert_eq!(*p.return_mode(), ReturnMode::Exits { sites: 1 });
        // Each placing sees calls, however slow the machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.stats().hits < 200 {
            assert!(Instant::now() < deadline, "the return probe saw no calls");
            std::thread::sleep(Duration::from_millis(1));
        }
        let st = p.unregister().unwrap();
        calls += st.hits;
        returns += st.returns;
        abandoned += st.abandoned;
    }
    stop.store(true, Relaxed);
    caller.join().unwrap();
    // One call may be between its entry and its exit as a probe goes (it returns unseen, or
    // seen: the probe's list of pending calls decides): never more, with one thread.
    assert!(
        abandoned <= PLACINGS && calls - returns <= PLACINGS,
        "{calls} calls, {returns} returns seen, {abandoned} abandoned over {PLACINGS} placings"
    );
    drop(entry);
    assert_eq!(code(f, 10), original, "original bytes back");
}
