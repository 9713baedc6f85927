//! Unregistering while other threads run the probed code.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, register_all, unregister_all, Kprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

static UNREGISTERED: AtomicBool = AtomicBool::new(false);
static LATE_CALLS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

#[test]
fn unregister_while_four_threads_hammer_the_function() {
    let f = addr(fx_push_add);
    let g = addr(fx_mov_add);
    let original_f = code(f, 16);
    let original_g = code(g, 16);
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(std::sync::Barrier::new(5));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, running) = (stop.clone(), running.clone());
            std::thread::spawn(move || {
                running.wait();
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    assert_eq!(call2(fx_push_add, t, n), t + n);
                    assert_eq!(call2(fx_mov_add, t, n), t + n);
                    n += 1;
                }
                n
            })
        })
        .collect();
    running.wait();
    for round in 0..20 {
        UNREGISTERED.store(false, SeqCst);
        let handler = |_: &mut dprobe_inproc::Regs| {
            if UNREGISTERED.load(SeqCst) {
                LATE_CALLS.fetch_add(1, SeqCst);
            }
            CALLS.fetch_add(1, SeqCst);
            PreAction::Continue
        };
        // Alternate single and batch (un)registration, with and without a post-handler.
        let probes =
            register_all(vec![Kprobe::addr(f).pre(handler), Kprobe::addr(g).pre(handler).post(|_| {})]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        if round % 2 == 0 {
            unregister_all(probes).unwrap();
        } else {
            for p in probes {
                p.unregister().unwrap();
            }
        }
        UNREGISTERED.store(true, SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(code(f, 16), original_f, "round {round}: bytes of the emulated site not restored");
        assert_eq!(code(g, 16), original_g, "round {round}: bytes of the post-step site not restored");
    }
    stop.store(true, SeqCst);
    let calls: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(calls > 0 && CALLS.load(SeqCst) > 0);
    assert_eq!(LATE_CALLS.load(SeqCst), 0, "a handler ran after unregister returned");
}

#[test]
fn dropping_the_handle_unregisters() {
    let at = addr(fx_spare2);
    let original = code(at, 8);
    {
        let p = register(Kprobe::addr(at)).unwrap();
        // Armed: an int3, or the jump that replaced it.
        assert_eq!(code(at, 1), if p.optimized().is_ok() { [0xe9] } else { [0xcc] });
    }
    assert_eq!(code(at, 8), original);
    assert!(dprobe_inproc::list().iter().all(|p| p.addr != at));
}
