//! Return probes through the return address have no fixed limit by default: recursion 10,000
//! and 200,000 deep sees every return with its own value; a signal handler on an alternate
//! stack recursing through a probed function while the thread is deep; a `longjmp` and a C++
//! exception from deep inside back to the top (every instance reclaimed, the thread's memory
//! given back); four threads at once. An explicit `maxactive` keeps its meaning: that many in
//! flight, the rest missed. The memory the pending returns grow into is mapped on the hit
//! path, which still allocates nothing from the heap: a global allocator here counts what it
//! is asked for there.
mod fixtures;
use fixtures::map_above;

use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

struct Watching;

static ALLOCS_ON_HIT_PATH: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_hit_path() {
            ALLOCS_ON_HIT_PATH.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_hit_path() {
            ALLOCS_ON_HIT_PATH.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

/// The tests share fixture functions and the process-wide chunk count: one at a time. Each
/// checks at its end that the hit path allocated nothing.
fn serial() -> impl Drop {
    static SERIAL: Mutex<()> = Mutex::new(());
    struct NoAllocation(#[allow(dead_code)] MutexGuard<'static, ()>);
    impl Drop for NoAllocation {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert_eq!(ALLOCS_ON_HIT_PATH.load(Relaxed), 0, "the hit path allocated");
            }
        }
    }
    NoAllocation(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// (returns, missed, abandoned, pending)
fn figures(p: &ReturnProbe) -> (u64, u64, u64, u64) {
    let st = p.stats();
    (st.returns, st.missed + st.reentered, st.abandoned, p.pending())
}

/// Run `f` on a thread with room for 200,000 frames (and dprobe's signal frames).
fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(128 << 20).spawn(f).unwrap().join().unwrap()
}

/// Chunks a thread maps for `entries` pending returns: the first 256 are held inline, then
/// chunks of 256, 512, 1024, ... entries.
fn chunks_for(entries: usize) -> usize {
    let (mut chunks, mut held) = (0, 256);
    while held < entries {
        held *= 2;
        chunks += 1;
    }
    chunks
}

/// A return probe with the default settings through the return address on `f`, counting in
/// `wrong` the returns whose value is not `expected(entry rdi)`, and keeping in `peak` the
/// most chunks its thread held at a return.
fn checked(f: *const (), expected: fn(u64) -> u64, wrong: &'static AtomicU64, peak: &'static AtomicU64) -> ReturnProbe {
    let p = register_kretprobe(
        Kretprobe::addr(at(f))
            .via_return_address()
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(move |regs, data| {
                if regs.rax != expected(data.0[0]) {
                    wrong.fetch_add(1, Relaxed);
                }
                peak.fetch_max(thread_return_chunks() as u64, Relaxed);
            }),
    )
    .unwrap();
    assert!(matches!(p.return_mode(), ReturnMode::ReturnAddress { .. }), "{:?}", p.return_mode());
    assert_eq!(p.maxactive(), None, "no limit by default");
    p
}

#[test]
fn recursion_ten_thousand_and_two_hundred_thousand_deep_every_return_seen() {
    let _one = serial();
    for depth in [10_000u64, 200_000] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        static PEAK: AtomicU64 = AtomicU64::new(0);
        static DEPTHS: AtomicU64 = AtomicU64::new(0);
        PEAK.store(0, Relaxed);
        DEPTHS.store(0, Relaxed);
        let p = checked(c::fxc_recurse as *const (), |n| n, &WRONG, &PEAK);
        let sum = register_kretprobe(Kretprobe::addr(at(c::fxc_recurse as *const ())).via_return_address().handler(
            |r, _| {
                DEPTHS.fetch_add(r.rax, Relaxed);
            },
        ))
        .unwrap();
        let (result, chunks_back_at_the_top) = on_big_stack(move || {
            // SAFETY: fxc_recurse(n) recurses n deep and returns n.
            let r = unsafe { c::fxc_recurse(black_box(depth as i64)) };
            (r, thread_return_chunks())
        });
        assert_eq!(result, depth as i64);
        // Two return probes on one function: each call is traced by both, chained on one
        // return address.
        for p in [&p, &sum] {
            assert_eq!(figures(p), (depth + 1, 0, 0, 0), "{depth}");
            assert_eq!(p.stats().hits, depth + 1);
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "every level saw its own return value");
        assert_eq!(DEPTHS.load(Relaxed), (0..=depth).sum::<u64>());
        // Two entries per call; back at the top the thread keeps one chunk, and none once it
        // is gone.
        assert_eq!(PEAK.load(Relaxed), chunks_for(2 * depth as usize + 2) as u64, "{depth}");
        assert_eq!(chunks_back_at_the_top, 1);
        assert_eq!(process_return_chunks(), 0);
    }
}

#[test]
fn a_signal_handler_on_an_alternate_stack_recurses_while_the_thread_is_deep() {
    let _one = serial();
    const OUTER: i64 = 10_000;
    const IN_HANDLER: i64 = 5_000;
    for above in [true, false] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        static PEAK: AtomicU64 = AtomicU64::new(0);
        PEAK.store(0, Relaxed);
        let outer = checked(c::fxc_signal_recurse as *const (), |n| n + IN_HANDLER as u64, &WRONG, &PEAK);
        let nested = checked(c::fxc_recurse as *const (), |n| n, &WRONG, &PEAK);
        on_big_stack(move || {
            let size = 16 << 20;
            let base = if above {
                map_above(&size as *const usize as usize, size)
            } else {
                Box::leak(vec![0u8; size].into_boxed_slice()).as_mut_ptr() as usize
            };
            // SAFETY: this thread's alternate stack is the fresh memory; the handler is a C
            // function that recurses in a probed function; the signal goes to this thread.
            unsafe {
                let ss = libc::stack_t { ss_sp: base as *mut libc::c_void, ss_flags: 0, ss_size: size };
                assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = c::fxc_on_signal_recurse as *const () as usize;
                sa.sa_flags = libc::SA_ONSTACK;
                assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
                c::fxc_signal_recurse_setup(IN_HANDLER, libc::SIGUSR2);
                for _ in 0..3 {
                    assert_eq!(c::fxc_signal_recurse(black_box(OUTER)), OUTER + IN_HANDLER);
                }
                let off = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
                assert_eq!(libc::sigaltstack(&off, std::ptr::null_mut()), 0);
            }
        });
        assert_eq!(figures(&outer), (3 * (OUTER as u64 + 1), 0, 0, 0), "above: {above}");
        assert_eq!(figures(&nested), (3 * (IN_HANDLER as u64 + 1), 0, 0, 0), "above: {above}");
        assert_eq!(WRONG.swap(0, Relaxed), 0, "above: {above}");
        // The handler's calls were pending on top of the thread's.
        let deepest = (OUTER + 1 + IN_HANDLER + 1) as usize;
        assert_eq!(PEAK.load(Relaxed), chunks_for(deepest) as u64, "above: {above}");
        assert_eq!(process_return_chunks(), 0);
    }
}

#[test]
fn a_longjmp_from_deep_inside_back_to_the_top_gives_everything_back() {
    let _one = serial();
    const DEPTH: i64 = 100_000;
    static DEEPEST: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(
        Kretprobe::addr(at(c::fxc_deep_victim as *const ()))
            .via_return_address()
            .entry_handler(|_, _| {
                DEEPEST.fetch_max(thread_return_chunks() as u64, Relaxed);
                EntryAction::Track
            })
            .handler(|_, _| {}),
    )
    .unwrap();
    let (after_jump, after_next_call) = on_big_stack(|| {
        let mut seen = Vec::new();
        for _ in 0..3 {
            // SAFETY: recurses DEPTH deep, then longjmps back to fxc_deep_jump_out: -1.
            assert_eq!(unsafe { c::fxc_deep_jump_out(black_box(DEPTH)) }, -1);
            let after_jump = thread_return_chunks();
            // A normal call from the same place finds every abandoned instance stale.
            // SAFETY: with a negative argument fxc_deep_victim returns it.
            assert_eq!(unsafe { c::fxc_deep_jump_out(black_box(-5)) }, -5);
            seen.push((after_jump, thread_return_chunks()));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        seen[0]
    });
    // The deepest entry saw DEPTH calls pending, and room made for its own.
    assert_eq!(DEEPEST.load(Relaxed), chunks_for(DEPTH as usize + 1) as u64);
    assert_eq!(after_jump, chunks_for(DEPTH as usize + 1), "abandoned, not reclaimed yet");
    assert_eq!(after_next_call, 1, "reclaimed: one chunk kept");
    assert_eq!(figures(&p), (3, 0, 3 * (DEPTH as u64 + 1), 0));
    assert_eq!(p.stats().hits, 3 * (DEPTH as u64 + 2));
    assert_eq!(process_return_chunks(), 0);
}

#[test]
fn a_cpp_exception_from_deep_inside_back_to_the_top_gives_everything_back() {
    let _one = serial();
    const DEPTH: i64 = 50_000;
    let p = register_kretprobe(
        Kretprobe::addr(at(c::fxcpp_deep_thrower as *const ())).via_return_address().handler(|_, _| {}),
    )
    .unwrap();
    let chunks = on_big_stack(|| {
        // SAFETY: recurses DEPTH deep, then throws back to fxcpp_deep_catch: -DEPTH - 1.
        assert_eq!(unsafe { c::fxcpp_deep_catch(black_box(DEPTH)) }, -DEPTH - 1);
        let after_throw = thread_return_chunks();
        // SAFETY: with a negative argument fxcpp_deep_thrower returns it.
        assert_eq!(unsafe { c::fxcpp_deep_catch(black_box(-3)) }, -3);
        (after_throw, thread_return_chunks())
    });
    // The unwinder put every return address back before it walked the stack.
    assert_eq!(chunks, (1, 1));
    assert_eq!(figures(&p), (1, 0, DEPTH as u64 + 1, 0));
    assert_eq!(process_return_chunks(), 0);
}

#[test]
fn four_threads_recurse_and_longjmp_deep_at_once() {
    let _one = serial();
    const DEPTH: i64 = 40_000;
    const ROUNDS: u64 = 3;
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static PEAK: AtomicU64 = AtomicU64::new(0);
    let rec = checked(c::fxc_recurse as *const (), |n| n, &WRONG, &PEAK);
    let victim = register_kretprobe(
        Kretprobe::addr(at(c::fxc_deep_victim as *const ())).via_return_address().handler(|_, _| {}),
    )
    .unwrap();
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let start = start.clone();
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS as i64 {
                        let depth = DEPTH - 1000 * t - round;
                        // SAFETY: fxc_recurse(n) recurses n deep and returns n.
                        assert_eq!(unsafe { c::fxc_recurse(black_box(depth)) }, depth);
                        // SAFETY: recurses, then longjmps back: -1.
                        assert_eq!(unsafe { c::fxc_deep_jump_out(black_box(depth / 2)) }, -1);
                    }
                    // SAFETY: a normal call: reclaims the last longjmp's instances.
                    assert_eq!(unsafe { c::fxc_deep_jump_out(black_box(-1)) }, -1);
                    thread_return_chunks()
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    let calls = |f: fn(i64) -> u64| (0..4).flat_map(|t| (0..ROUNDS as i64).map(move |r| DEPTH - 1000 * t - r)).map(f);
    let recursed: u64 = calls(|d| d as u64 + 1).sum();
    let jumped: u64 = calls(|d| (d / 2) as u64 + 1).sum();
    assert_eq!(figures(&rec), (recursed, 0, 0, 0));
    assert_eq!(WRONG.load(Relaxed), 0);
    assert_eq!(figures(&victim), (4, 0, jumped, 0));
    assert_eq!(process_return_chunks(), 0);
}

#[test]
fn an_explicit_maxactive_still_bounds_the_instances_in_flight() {
    let _one = serial();
    static DEPTHS: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(
        Kretprobe::addr(at(c::fxc_recurse as *const ())).via_return_address().maxactive(100).handler(|r, _| {
            DEPTHS.fetch_add(r.rax, Relaxed);
        }),
    )
    .unwrap();
    assert_eq!(p.maxactive(), Some(100));
    let result = on_big_stack(|| {
        // SAFETY: fxc_recurse(n) recurses n deep and returns n.
        unsafe { c::fxc_recurse(black_box(10_000)) }
    });
    assert_eq!(result, 10_000);
    assert_eq!(figures(&p), (100, 10_001 - 100, 0, 0));
    // The outermost calls were traced: they return 10000, 9999, ...
    assert_eq!(DEPTHS.load(Relaxed), (10_001 - 100..=10_000).sum::<u64>());
}
