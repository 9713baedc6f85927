//! Return probes and stack shapes that break return-address hijacking when it is done
//! naively: tail calls between probed functions, a signal handler on an alternate stack that
//! lies above the frames it interrupted, recursion deeper than the pool, coroutines switching
//! stacks with calls pending on each.
mod fixtures;
use fixtures::{checked, map_above};

use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

#[test]
fn a_tail_call_between_two_return_probed_functions_returns_once_from_each() {
    for via_return_address in [false, true] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let outer = checked(c::fxc_tail_outer as *const (), |x| 3 * (x + 1), &WRONG, via_return_address);
        let inner = checked(c::fxc_tail_inner as *const (), |x| 3 * x, &WRONG, via_return_address);
        for p in [&outer, &inner] {
            assert_eq!(matches!(p.return_mode(), ReturnMode::Exits { .. }), !via_return_address);
        }
        for i in 0..1000 {
            // SAFETY: plain arithmetic functions.
            assert_eq!(unsafe { c::fxc_tail_outer(black_box(i)) }, 3 * (i + 1));
        }
        for p in [&outer, &inner] {
            let st = p.stats();
            assert_eq!(
                (st.returns, (st.missed + st.reentered), st.abandoned, p.pending()),
                (1000, 0, 0, 0),
                "{:?}: {st:?}",
                p.return_mode()
            );
        }
        assert_eq!(WRONG.load(Relaxed), 0, "each return saw its own value");
    }
}

#[test]
fn coroutines_switching_stacks_with_calls_pending_on_each_return_exactly() {
    // Two coroutines 100 deep, each on a stack of its own: the first resumed returns while
    // the second's frames, on a stack above or below its own, are the latest pending. Their
    // stacks are mapped again at each call: where the last ones were, or, while a writable
    // mapping of the program's lies at the top of the hole, right under it (the kernel merges
    // the first stack with it), then at the top again once it is gone. The mappings the
    // thread met and remembers are then out of date: one of them spans both new stacks'
    // tops. (One test: the fixture's coroutines are one set, in statics.)
    for via_return_address in [false, true] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let p = checked(c::fxc_co_rec as *const (), |n| n, &WRONG, via_return_address);
        let mut calls = 0;
        for held in [0usize, 600 << 10, 0, 300 << 10, 0] {
            // SAFETY: a new private mapping, unmapped after the calls.
            let m = (held > 0).then(|| unsafe {
                let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
                let m = libc::mmap(std::ptr::null_mut(), held, prot, flags, -1, 0);
                assert_ne!(m, libc::MAP_FAILED);
                m
            });
            for higher in [1, 0] {
                // SAFETY: the fixture maps its coroutines' stacks and unmaps them when done.
                assert_eq!(unsafe { c::fxc_coroutines(10, 100, higher) }, 10 * 100 * 1001);
                calls += 1;
            }
            if let Some(m) = m {
                // SAFETY: the mapping made above, used by nothing.
                unsafe { libc::munmap(m, held) };
            }
        }
        let st = p.stats();
        assert_eq!(
            (st.returns, (st.missed + st.reentered), st.abandoned, p.pending()),
            (calls * 2 * 10 * 101, 0, 0, 0),
            "{:?}: {st:?}",
            p.return_mode()
        );
        assert_eq!(WRONG.load(Relaxed), 0, "each return saw its own value");
    }
}

#[test]
fn a_coroutine_resumed_on_another_thread_returns_there_through_the_trampoline() {
    // Suspended 50 frames deep on this thread, resumed on a new one: each frame returns
    // there, through the trampoline, to its real caller. Its entry is this thread's (the
    // instance too): the return is not seen, and the entry is dropped as stale once this
    // thread's next call on that stack finds the frame gone. (At the exits nothing is
    // replaced: a return there is simply not paired.)
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let p = checked(c::fxc_mig_rec as *const (), |n| n, &WRONG, true);
    let (rounds, depth) = (20, 50);
    // SAFETY: the fixture maps its coroutine's stack and unmaps it when done; its threads are
    // joined.
    assert_eq!(unsafe { c::fxc_co_migrate(rounds, depth) }, rounds * depth);
    let st = p.stats();
    let calls = (rounds * (depth + 1)) as u64;
    assert_eq!(
        (st.hits, st.returns, st.missed, st.abandoned + p.pending()),
        (calls, 0, 0, calls),
        "{:?}: {st:?}",
        p.return_mode()
    );
}

#[test]
fn an_alternate_signal_stack_above_the_interrupted_frames_keeps_their_return() {
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let outer = checked(c::fxc_alt_outer as *const (), |x| 5 * x + 1, &WRONG, false);
    let nested = checked(c::fxc_alt_nested as *const (), |x| 5 * x, &WRONG, false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let size = 64 * 1024;
            let base = map_above(&size as *const usize as usize, size);
            // SAFETY: this thread's alternate stack is the fresh mapping; the handler is a C
            // function that calls a probed function; the signal goes to this thread only.
            unsafe {
                let ss = libc::stack_t { ss_sp: base as *mut libc::c_void, ss_flags: 0, ss_size: size };
                assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = c::fxc_on_alt_signal as *const () as usize;
                sa.sa_flags = libc::SA_ONSTACK;
                assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
                for i in 0..200 {
                    assert_eq!(c::fxc_alt_outer(black_box(i), libc::SIGUSR2), 5 * i + 1);
                }
                let off = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
                assert_eq!(libc::sigaltstack(&off, std::ptr::null_mut()), 0);
            }
        });
    });
    for p in [&outer, &nested] {
        let st = p.stats();
        assert_eq!((st.returns, (st.missed + st.reentered), st.abandoned, p.pending()), (200, 0, 0, 0), "{st:?}");
    }
    assert_eq!(WRONG.load(Relaxed), 0);
}

#[test]
fn recursion_deeper_than_the_pool_returns_correctly_and_counts_every_call() {
    static DEPTHS: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_recurse as *const ())).maxactive(16).handler(|r, _| {
        DEPTHS.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    // SAFETY: fxc_recurse(n) recurses n deep and returns n.
    assert_eq!(unsafe { c::fxc_recurse(black_box(10_000)) }, 10_000);
    let st = p.stats();
    let traced = p.maxactive().expect("a pool of 16") as u64;
    assert_eq!(
        (st.returns, (st.missed + st.reentered), st.abandoned, p.pending()),
        (traced, 10_001 - traced, 0, 0),
        "{st:?}"
    );
    // The outermost calls were traced: they return 10000, 9999, ...
    assert_eq!(DEPTHS.load(Relaxed), (10_001 - traced..=10_000).sum::<u64>());
}
