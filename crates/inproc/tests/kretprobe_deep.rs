//! Return probes have no fixed limit by default: recursion 10,000 and 200,000 deep sees every
//! return with its own value, through the return address and at the function's exits; so does
//! a signal handler on an alternate stack recursing through a probed function while the thread
//! is deep; a `longjmp` and a C++ exception from deep inside back to the top reclaim every
//! instance and give the thread's memory back; four threads do it at once. An explicit
//! `maxactive` keeps its meaning: that many in flight, the rest missed. Memory that cannot be
//! mapped (an address-space limit) misses the deepest calls, counted, and nothing else. The
//! memory pending calls grow into is mapped on the hit path, which still allocates nothing from
//! the heap: a global allocator here counts what it is asked for there.
mod fixtures;

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
/// most chunks the process held at a return.
fn checked(f: *const (), expected: fn(u64) -> u64, wrong: &'static AtomicU64, peak: &'static AtomicU64) -> ReturnProbe {
    checked_in(f, expected, wrong, peak, true)
}

/// [`checked`], through the return address or at the function's exits.
fn checked_in(
    f: *const (),
    expected: fn(u64) -> u64,
    wrong: &'static AtomicU64,
    peak: &'static AtomicU64,
    via_return_address: bool,
) -> ReturnProbe {
    let k = Kretprobe::addr(at(f));
    let p = register_kretprobe(
        if via_return_address { k.via_return_address() } else { k }
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(move |regs, data| {
                if regs.rax != expected(data.0[0]) {
                    wrong.fetch_add(1, Relaxed);
                }
                peak.fetch_max(process_return_chunks() as u64, Relaxed);
            }),
    )
    .unwrap();
    let through_return_address = matches!(p.return_mode(), ReturnMode::ReturnAddress { .. });
    assert_eq!(through_return_address, via_return_address, "{:?}", p.return_mode());
    assert_eq!(p.maxactive(), None, "no limit by default");
    p
}

#[test]
fn recursion_ten_thousand_and_two_hundred_thousand_deep_every_return_seen() {
    let _one = serial();
    for (via_return_address, depth) in [(true, 10_000u64), (true, 200_000), (false, 10_000), (false, 200_000)] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        static PEAK: AtomicU64 = AtomicU64::new(0);
        static DEPTHS: AtomicU64 = AtomicU64::new(0);
        PEAK.store(0, Relaxed);
        DEPTHS.store(0, Relaxed);
        let p = checked_in(c::fxc_recurse as *const (), |n| n, &WRONG, &PEAK, via_return_address);
        let k = Kretprobe::addr(at(c::fxc_recurse as *const ()));
        let sum = register_kretprobe(if via_return_address { k.via_return_address() } else { k }.handler(|r, _| {
            DEPTHS.fetch_add(r.rax, Relaxed);
        }))
        .unwrap();
        let (result, chunks_back_at_the_top) = on_big_stack(move || {
            // SAFETY: fxc_recurse(n) recurses n deep and returns n.
            let r = unsafe { c::fxc_recurse(black_box(depth as i64)) };
            (r, process_return_chunks())
        });
        assert_eq!(result, depth as i64);
        let how = (p.return_mode().clone(), depth);
        // Two return probes on one function: each call is traced by both (through the return
        // address, chained on one return address; at the exits, sharing one activation).
        for p in [&p, &sum] {
            assert_eq!(figures(p), (depth + 1, 0, 0, 0), "{how:?}");
            assert_eq!(p.stats().hits, depth + 1, "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "every level saw its own return value");
        assert_eq!(DEPTHS.load(Relaxed), (0..=depth).sum::<u64>());
        // Back at the top the thread keeps one chunk, and none once it is gone.
        let entries = if via_return_address { 2 * depth + 2 } else { depth + 1 };
        assert_eq!(PEAK.load(Relaxed), chunks_for(entries as usize) as u64, "{how:?}");
        assert_eq!(chunks_back_at_the_top, 1, "{how:?}");
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
        on_big_stack(move || fixtures::recurse_in_alt_stack_handler(above, 16 << 20, OUTER, IN_HANDLER, 3));
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

/// What the child of [`memory_that_cannot_be_mapped_misses_the_deepest_calls_and_nothing_else`]
/// saw: the recursion's result, and the probe's returns, misses and pending instances.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ChildSaw {
    result: i64,
    returns: u64,
    missed: u64,
    pending: u64,
    sum: u64,
}

#[test]
fn memory_that_cannot_be_mapped_misses_the_deepest_calls_and_nothing_else() {
    let _one = serial();
    const DEPTH: i64 = 200_000;
    // With the instances made at registration (a maxactive as deep as the recursion), only the
    // thread's stack of pending calls grows.
    let pool = Some(DEPTH as usize + 1);
    for (via_return_address, maxactive) in [(true, None), (false, None), (true, pool), (false, pool)] {
        static SUM: AtomicU64 = AtomicU64::new(0);
        SUM.store(0, Relaxed);
        let k = Kretprobe::addr(at(c::fxc_recurse as *const ())).handler(|r, _| {
            SUM.fetch_add(r.rax, Relaxed);
        });
        let k = if let Some(n) = maxactive { k.maxactive(n) } else { k };
        let p = register_kretprobe(if via_return_address { k.via_return_address() } else { k }).unwrap();
        let p = &p;
        let in_child = move || {
            let mut fds = [0; 2];
            // SAFETY: a pipe for the child's answer; the child runs only the probed
            // recursion (signal-safe hit path), reads of atomics, write and _exit.
            unsafe {
                assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
                let vm_bytes = {
                    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
                    statm.split_whitespace().next().unwrap().parse::<u64>().unwrap() * 4096
                };
                let child = libc::fork();
                assert!(child >= 0);
                if child == 0 {
                    // A little more address space than the process has now: the first chunks
                    // fit, the later ones (each twice as large) cannot be mapped.
                    let limit = libc::rlimit { rlim_cur: vm_bytes + (2 << 20), rlim_max: libc::RLIM_INFINITY };
                    libc::setrlimit(libc::RLIMIT_AS, &limit);
                    let result = c::fxc_recurse(black_box(DEPTH));
                    let st = p.stats();
                    let saw = ChildSaw {
                        result,
                        returns: st.returns,
                        missed: st.missed + st.reentered,
                        pending: p.pending(),
                        sum: SUM.load(Relaxed),
                    };
                    let bytes = std::slice::from_raw_parts(
                        &saw as *const ChildSaw as *const u8,
                        std::mem::size_of::<ChildSaw>(),
                    );
                    libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0);
                }
                libc::close(fds[1]);
                let mut saw = ChildSaw::default();
                let n = libc::read(fds[0], (&mut saw as *mut ChildSaw).cast(), std::mem::size_of::<ChildSaw>());
                let mut status = 0;
                assert_eq!(libc::waitpid(child, &mut status, 0), child);
                libc::close(fds[0]);
                assert_eq!((n as usize, status), (std::mem::size_of::<ChildSaw>(), 0), "the child ended well");
                saw
            }
        };
        let saw = std::thread::scope(|s| {
            std::thread::Builder::new().stack_size(128 << 20).spawn_scoped(s, in_child).unwrap().join().unwrap()
        });
        let how = (p.return_mode().clone(), maxactive, saw);
        assert_eq!(saw.result, DEPTH, "the program's own result: {how:?}");
        // Some calls were traced, the deeper ones missed; every call is one or the other, and
        // the traced ones are the outermost, each with its own value.
        assert!(saw.returns > 256 && saw.missed > 0, "{how:?}");
        assert_eq!((saw.returns + saw.missed, saw.pending), (DEPTH as u64 + 1, 0), "{how:?}");
        let traced = DEPTH as u64 + 1 - saw.returns..=DEPTH as u64;
        assert_eq!(saw.sum, traced.sum::<u64>(), "{how:?}");
    }
}
