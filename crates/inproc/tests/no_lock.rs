//! The hit path takes no lock: while another thread holds every lock of dprobe's
//! registration side (and the allocator's are not taken either: see `no_alloc.rs`), probes of
//! every kind still hit, run their handlers and return. Were a hit to take one of those
//! locks, it would wait for it, and this test would report the hits as stuck.
mod fixtures;
use fixtures::*;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::Duration;

use dprobe_inproc::{register, register_kretprobe, Kprobe, Kretprobe, PreAction, ReturnMode};

#[test]
fn probes_hit_while_every_registration_lock_is_held() {
    static PRE: AtomicU64 = AtomicU64::new(0);
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    let count = |_: &mut dprobe_inproc::Regs| {
        PRE.fetch_add(1, Relaxed);
        PreAction::Continue
    };
    let emulated = register(Kprobe::addr(addr(fx_push_add)).pre(count)).unwrap();
    let boosted = register(Kprobe::addr(addr(fx_mov_add)).pre(count)).unwrap();
    let post_step = register(Kprobe::addr(addr(fx_spare1)).pre(count).post(|_| {}).no_optimize()).unwrap();
    // A jump inside a function (the whole extended state kept on a CPU with AVX) with a
    // post-handler: the detour's post block.
    let inner = register(Kprobe::addr(addr(fx_push_add).offset(1)).pre(count).post(|_| {})).unwrap();
    assert_eq!(inner.optimized(), Ok(()), "the inner jump with a post-handler is tested here");
    let jump = register(Kprobe::addr(dprobe_inproc::Addr(fx_riprel as *const () as u64)).pre(count)).unwrap();
    assert_eq!(jump.optimized(), Ok(()), "the jump path is tested here");
    let returns = register_kretprobe(Kretprobe::addr(addr(fx_spare2)).handler(|_, _| {
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert!(matches!(returns.return_mode(), ReturnMode::Exits { .. }), "the exit path is tested here");
    // At its exits, a function that tail-calls an unprobed one (its return comes through the
    // trampoline written at the jump).
    let tail_outer = dprobe_inproc::Addr(dprobe_test_fixtures::fxc_tail_outer as *const () as u64);
    let tail = register_kretprobe(Kretprobe::addr(tail_outer).handler(|regs, _| {
        RETURNS.fetch_add(u64::from(regs.rax % 3 == 0), Relaxed);
    }))
    .unwrap();
    assert!(matches!(tail.return_mode(), ReturnMode::Exits { .. }));
    let trampoline = register_kretprobe(Kretprobe::addr(addr(fx_push_add)).via_return_address().handler(|_, _| {
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();

    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let locks = dprobe_inproc::hold_registration_locks();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(locks);
    });
    held_rx.recv().unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    let hitter = std::thread::spawn(move || {
        for i in 0..1_000 {
            call2(fx_push_add, i, 1);
            call2(fx_mov_add, i, 1);
            call2(fx_spare1, i, 1);
            call2(fx_spare2, i, 1);
            // SAFETY: plain arithmetic, 3 (i + 1).
            let tail = unsafe { dprobe_test_fixtures::fxc_tail_outer(std::hint::black_box(i as i64)) };
            assert_eq!(tail, 3 * (i as i64 + 1));
            // SAFETY: reads a static.
            unsafe { fx_riprel(std::hint::black_box(i)) };
        }
        done_tx.send(()).unwrap();
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(30)).is_ok();
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    hitter.join().unwrap();
    assert!(finished, "hits waited for a lock the other thread held");
    assert_eq!((PRE.load(Relaxed), RETURNS.load(Relaxed)), (5_000, 3_000));
    for p in [&emulated, &boosted, &post_step, &jump, &inner] {
        assert_eq!(p.hits(), 1_000);
    }
    drop((returns, trampoline, tail));
}
