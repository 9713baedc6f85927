//! A return probe watched at the function's exits, on a function that leaves by a tail call
//! (`jmp`) into a function whose returns are not watched (not probed, or probed through its
//! return address): the function returns where its callee does, with the callee's value, seen
//! through the trampoline in the return address the callee returns through. Exact counts,
//! results compared with unprobed runs, against the programs that break such a trampoline:
//! threads, a C++ exception and a `longjmp` out of the callee, recursion through the tail call,
//! return-address entries chained on the same word (returned innermost first),
//! and the probe registered and unregistered in a loop while four threads call.
mod fixtures;
use fixtures::checked;

use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

/// The tests share fixture functions: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_exits(p: &ReturnProbe) -> bool {
    matches!(p.return_mode(), ReturnMode::Exits { .. })
}

/// (returns, missed, abandoned, pending)
fn figures(p: &ReturnProbe) -> (u64, u64, u64, u64) {
    let st = p.stats();
    (st.returns, st.missed + st.reentered, st.abandoned, p.pending())
}

/// How the tail call's callee is probed.
#[derive(Debug, Clone, Copy)]
enum Callee {
    Unprobed,
    ThroughReturnAddress,
    AtExits,
}

const CALLEES: [Callee; 3] = [Callee::Unprobed, Callee::ThroughReturnAddress, Callee::AtExits];

fn probe_callee(f: *const (), expected: fn(u64) -> u64, wrong: &'static AtomicU64, how: Callee) -> Option<ReturnProbe> {
    match how {
        Callee::Unprobed => None,
        Callee::ThroughReturnAddress => Some(checked(f, expected, wrong, true)),
        Callee::AtExits => Some(checked(f, expected, wrong, false)),
    }
}

/// fxc_tail_outer(x) ends in `jmp fxc_tail_inner` with x + 1; fxc_tail_inner(y) = 3y.
fn outer_value(x: u64) -> u64 {
    3 * (x + 1)
}

fn inner_value(y: u64) -> u64 {
    3 * y
}

#[test]
fn a_tail_call_into_an_unwatched_function_returns_with_its_value() {
    let _one = serial();
    for how in CALLEES {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        static AT_TRAMPOLINE: AtomicU64 = AtomicU64::new(0);
        let outer = register_kretprobe(
            Kretprobe::addr(at(c::fxc_tail_outer as *const ()))
                .maxactive(64)
                .entry_handler(|regs, data| {
                    data.0[0] = regs.rdi;
                    EntryAction::Track
                })
                .handler(|regs, data| {
                    if regs.rax != outer_value(data.0[0]) {
                        WRONG.fetch_add(1, Relaxed);
                    }
                    // The handler sees where the function returns to, not dprobe's trampoline.
                    if regs.rip == trampoline_addr() {
                        AT_TRAMPOLINE.fetch_add(1, Relaxed);
                    }
                }),
        )
        .unwrap();
        assert!(is_exits(&outer), "{:?}", outer.return_mode());
        let inner = probe_callee(c::fxc_tail_inner as *const (), inner_value, &WRONG, how);
        for i in 0..1000 {
            // SAFETY: plain arithmetic functions.
            assert_eq!(unsafe { c::fxc_tail_outer(black_box(i)) }, 3 * (i + 1));
        }
        assert_eq!(figures(&outer), (1000, 0, 0, 0), "{how:?}");
        if let Some(inner) = &inner {
            assert_eq!(figures(inner), (1000, 0, 0, 0), "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{how:?}: every return with the callee's value");
        assert_eq!(AT_TRAMPOLINE.swap(0, Relaxed), 0, "{how:?}");
    }
}

#[test]
fn the_caller_probed_through_its_return_address_and_the_callee_at_its_exits() {
    let _one = serial();
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let outer = checked(c::fxc_tail_outer as *const (), outer_value, &WRONG, true);
    let inner = checked(c::fxc_tail_inner as *const (), inner_value, &WRONG, false);
    assert!(is_exits(&inner) && !is_exits(&outer));
    for i in 0..1000 {
        // SAFETY: plain arithmetic functions.
        assert_eq!(unsafe { c::fxc_tail_outer(black_box(i)) }, 3 * (i + 1));
    }
    assert_eq!((figures(&outer), figures(&inner)), ((1000, 0, 0, 0), (1000, 0, 0, 0)));
    assert_eq!(WRONG.load(Relaxed), 0);
}

#[test]
fn four_threads_tail_call_into_unwatched_functions() {
    let _one = serial();
    const CALLS: i64 = 5000;
    for how in [Callee::Unprobed, Callee::ThroughReturnAddress] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let outer = checked(c::fxc_tail_outer as *const (), outer_value, &WRONG, false);
        let inner = probe_callee(c::fxc_tail_inner as *const (), inner_value, &WRONG, how);
        std::thread::scope(|s| {
            for t in 0..4i64 {
                s.spawn(move || {
                    for i in 0..CALLS {
                        let x = t * 1_000_000 + i;
                        // SAFETY: plain arithmetic functions.
                        assert_eq!(unsafe { c::fxc_tail_outer(black_box(x)) }, 3 * (x + 1));
                    }
                });
            }
        });
        let all = 4 * CALLS as u64;
        assert_eq!(figures(&outer), (all, 0, 0, 0), "{how:?}");
        if let Some(inner) = &inner {
            assert_eq!(figures(inner), (all, 0, 0, 0), "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{how:?}");
    }
}

/// fxcpp_catch_tail(x): x + 1 when nothing is thrown (x < 0), else -x - 1.
fn catch_value(x: u64) -> u64 {
    let x = x as i64;
    (if x < 0 { x + 1 } else { -x - 1 }) as u64
}

#[test]
fn a_cpp_exception_thrown_by_the_callee_through_the_hijacked_return_address() {
    let _one = serial();
    const N: i64 = 2000;
    // SAFETY: the catcher returns x + 1 for x < 0, -x - 1 otherwise.
    let untraced: Vec<i64> = (-3..N).map(|i| unsafe { c::fxcpp_catch_tail(black_box(i)) }).collect();
    for how in CALLEES {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let catcher = checked(c::fxcpp_catch_tail as *const (), catch_value, &WRONG, false);
        let tail = checked(c::fxcpp_tail_throw as *const (), |x| x, &WRONG, false);
        let thrower = probe_callee(c::fxcpp_thrower as *const (), |x| x, &WRONG, how);
        assert!(is_exits(&catcher) && is_exits(&tail));
        // SAFETY: as above.
        let traced: Vec<i64> = (-3..N).map(|i| unsafe { c::fxcpp_catch_tail(black_box(i)) }).collect();
        assert_eq!(traced, untraced, "{how:?}");
        // Before the unwinder walks the stack it gets the real return address back; the
        // calls it unwinds are abandoned, the others return with the callee's value.
        assert_eq!(figures(&tail), (3, 0, N as u64, 0), "{how:?}");
        assert_eq!(figures(&catcher), (N as u64 + 3, 0, 0, 0), "{how:?}");
        if let Some(thrower) = &thrower {
            assert_eq!(figures(thrower), (3, 0, N as u64, 0), "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{how:?}");
    }
}

#[test]
fn longjmp_out_of_the_callee_of_a_tail_call() {
    let _one = serial();
    for how in [Callee::Unprobed, Callee::ThroughReturnAddress] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let tail = checked(c::fxc_tail_victim as *const (), |x| x, &WRONG, false);
        let jumper =
            checked(c::fxc_jump_out_tail as *const (), |x| if (x as i64) < 0 { x } else { u64::MAX }, &WRONG, false);
        let victim = probe_callee(c::fxc_victim as *const (), |x| x, &WRONG, how);
        assert!(is_exits(&tail) && is_exits(&jumper));
        for i in 0..5000 {
            // SAFETY: fxc_jump_out_tail setjmps, calls fxc_tail_victim, which jumps to
            // fxc_victim, which longjmps back: returns -1.
            assert_eq!(unsafe { c::fxc_jump_out_tail(black_box(i)) }, -1);
        }
        // SAFETY: a negative argument returns normally.
        assert_eq!(unsafe { c::fxc_jump_out_tail(black_box(-7)) }, -7);
        // Every frame the longjmp left is found abandoned; the last call returns with -7.
        assert_eq!(figures(&tail), (1, 0, 5000, 0), "{how:?}");
        assert_eq!(figures(&jumper), (5001, 0, 0, 0), "{how:?}");
        if let Some(victim) = &victim {
            assert_eq!(figures(victim), (1, 0, 5000, 0), "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{how:?}");
    }
}

#[test]
fn recursion_through_the_tail_call() {
    let _one = serial();
    // Each level holds an entry of the thread's pending stack, and one more when the callee is
    // probed through its return address: 2 x 101 fit.
    const DEPTH: i64 = 100;
    for how in [Callee::Unprobed, Callee::ThroughReturnAddress] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        // fxc_tail_rec(n) jumps to fxc_tail_rec_step(n), which calls fxc_tail_rec(n - 1):
        // each level returns through its own return address with 2n.
        let rec = checked(c::fxc_tail_rec as *const (), |n| 2 * n, &WRONG, false);
        let step = probe_callee(c::fxc_tail_rec_step as *const (), |n| 2 * n, &WRONG, how);
        for _ in 0..3 {
            // SAFETY: recursion DEPTH deep.
            assert_eq!(unsafe { c::fxc_tail_rec(black_box(DEPTH)) }, 2 * DEPTH);
        }
        let levels = 3 * (DEPTH as u64 + 1);
        assert_eq!(figures(&rec), (levels, 0, 0, 0), "{how:?}");
        if let Some(step) = &step {
            assert_eq!(figures(step), (levels, 0, 0, 0), "{how:?}");
        }
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{how:?}");
    }
}

#[test]
fn recursion_through_the_tail_call_deeper_than_the_inline_pending_stack_sees_every_return() {
    let _one = serial();
    static WRONG: AtomicU64 = AtomicU64::new(0);
    const DEPTH: i64 = 1000;
    let rec = checked(c::fxc_tail_rec as *const (), |n| 2 * n, &WRONG, false);
    // SAFETY: recursion DEPTH deep.
    assert_eq!(unsafe { c::fxc_tail_rec(black_box(DEPTH)) }, 2 * DEPTH);
    // Each level's return address holds the trampoline, kept on the thread's pending stack
    // (past its first 256 entries, in memory it maps as it goes deeper).
    assert_eq!(figures(&rec), (DEPTH as u64 + 1, 0, 0, 0));
    assert_eq!(WRONG.load(Relaxed), 0);
}

#[test]
fn recursion_through_the_tail_call_deeper_than_maxactive_misses_the_deepest_returns() {
    let _one = serial();
    static WRONG: AtomicU64 = AtomicU64::new(0);
    const DEPTH: i64 = 1000;
    const HELD: u64 = 256;
    let rec = register_kretprobe(
        Kretprobe::addr(at(c::fxc_tail_rec as *const ()))
            .maxactive(HELD as usize)
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(|regs, data| {
                WRONG.fetch_add(u64::from(regs.rax != 2 * data.0[0]), Relaxed);
            }),
    )
    .unwrap();
    assert!(is_exits(&rec));
    // SAFETY: recursion DEPTH deep.
    assert_eq!(unsafe { c::fxc_tail_rec(black_box(DEPTH)) }, 2 * DEPTH);
    // The outermost calls hold the instances; the deeper ones are missed, not reported with
    // a value they did not return.
    assert_eq!(figures(&rec), (HELD, DEPTH as u64 + 1 - HELD, 0, 0));
    assert_eq!(WRONG.load(Relaxed), 0);
}

#[test]
fn tail_calls_all_the_way_down_return_through_one_return_address() {
    let _one = serial();
    static SEVENS: AtomicU64 = AtomicU64::new(0);
    const DEPTH: i64 = 10_000;
    // fxc_tail_loop(n) jumps to fxc_tail_loop_step(n), which jumps to fxc_tail_loop(n - 1):
    // every level returns 7 at once, through the first call's return address.
    let p = register_kretprobe(
        Kretprobe::addr(at(c::fxc_tail_loop as *const ())).maxactive(DEPTH as usize + 1).handler(|regs, _| {
            SEVENS.fetch_add(u64::from(regs.rax == 7), Relaxed);
        }),
    )
    .unwrap();
    assert!(is_exits(&p));
    for _ in 0..3 {
        // SAFETY: plain jumps, returns 7.
        assert_eq!(unsafe { c::fxc_tail_loop(black_box(DEPTH)) }, 7);
    }
    let levels = 3 * (DEPTH as u64 + 1);
    assert_eq!(figures(&p), (levels, 0, 0, 0));
    assert_eq!(SEVENS.load(Relaxed), levels);
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// The first `len` bytes of `f`.
fn code(f: *const (), len: usize) -> Vec<u8> {
    fixtures::code(at(f), len)
}

#[test]
fn four_threads_call_while_the_probe_comes_and_goes() {
    let _one = serial();
    let (outer, inner) = (c::fxc_tail_outer as *const (), c::fxc_tail_inner as *const ());
    let original = (code(outer, 16), code(inner, 16));
    let stop = AtomicBool::new(false);
    // While `hold` is set the callers wait between two calls (`waiting` of them), so that the
    // figures can be read with no call in flight.
    let hold = AtomicBool::new(false);
    let waiting = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let (stop, hold, waiting, calls) = (&stop, &hold, &waiting, &calls);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Relaxed) {
                    if hold.load(SeqCst) {
                        waiting.fetch_add(1, SeqCst);
                        while hold.load(SeqCst) && !stop.load(Relaxed) {
                            std::thread::yield_now();
                        }
                        waiting.fetch_sub(1, SeqCst);
                    }
                    let x = t * 1_000_000 + i;
                    // SAFETY: plain arithmetic functions.
                    assert_eq!(unsafe { c::fxc_tail_outer(black_box(x)) }, 3 * (x + 1));
                    i += 1;
                    calls.fetch_add(1, Relaxed);
                }
            });
        }
        // The callers stop however this loop ends (a failed assertion too).
        let _stop = StopOnDrop(&stop);
        let (mut seen, mut cycles) = (0, 0);
        while cycles < 200 || seen < 1000 {
            static WRONG: AtomicU64 = AtomicU64::new(0);
            let p = checked(outer, outer_value, &WRONG, false);
            // Every other cycle the callee is probed through its return address too.
            let q = (cycles % 2 == 1).then(|| checked(inner, inner_value, &WRONG, true));
            assert!(is_exits(&p));
            let before = calls.load(Relaxed);
            while calls.load(Relaxed) < before + 20 {
                std::thread::yield_now();
            }
            hold.store(true, SeqCst);
            while waiting.load(SeqCst) < 4 {
                std::thread::yield_now();
            }
            let (st, pending) = (p.stats(), p.pending());
            hold.store(false, SeqCst);
            // The probes go while the callers run again.
            drop(q);
            drop(p);
            // No call in flight: every call the entry saw returned or was missed.
            assert_eq!((st.hits, pending), (st.returns + st.missed + st.abandoned, 0), "{st:?}");
            assert_eq!(WRONG.load(Relaxed), 0);
            seen += st.returns;
            cycles += 1;
        }
    });
    assert_eq!((code(outer, 16), code(inner, 16)), original, "every byte is back");
}

#[test]
fn tail_calls_through_a_function_probed_by_its_return_address_return_innermost_first() {
    let _one = serial();
    // fxc_tail_loop(k) (at its exits) jumps to fxc_tail_loop_step(k) (through its return
    // address), which jumps to fxc_tail_loop(k - 1): one return address for all, the
    // trampoline's entries of both kinds chained on it. The returns come innermost first:
    // step(0), loop(0), step(1), loop(1), ... each with 7.
    const DEPTH: u64 = 100;
    static ORDER: [AtomicU64; 2 * DEPTH as usize + 2] = [const { AtomicU64::new(u64::MAX) }; 2 * DEPTH as usize + 2];
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let probe = |f: *const (), tag: u64, via_return_address: bool| {
        let k = Kretprobe::addr(at(f))
            .maxactive(2 * DEPTH as usize)
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(move |regs, data| {
                let i = NEXT.fetch_add(1, Relaxed) as usize;
                if let Some(slot) = ORDER.get(i) {
                    slot.store(2 * data.0[0] + tag, Relaxed);
                }
                WRONG.fetch_add(u64::from(regs.rax != 7), Relaxed);
            });
        register_kretprobe(if via_return_address { k.via_return_address() } else { k }).unwrap()
    };
    let looped = probe(c::fxc_tail_loop as *const (), 1, false);
    let step = probe(c::fxc_tail_loop_step as *const (), 0, true);
    assert!(is_exits(&looped) && !is_exits(&step));
    // SAFETY: plain jumps, returns 7.
    assert_eq!(unsafe { c::fxc_tail_loop(black_box(DEPTH as i64)) }, 7);
    let order: Vec<u64> = ORDER.iter().map(|o| o.load(Relaxed)).collect();
    assert_eq!(order, (0..2 * DEPTH + 2).collect::<Vec<u64>>());
    assert_eq!((figures(&looped), figures(&step)), ((DEPTH + 1, 0, 0, 0), (DEPTH + 1, 0, 0, 0)));
    assert_eq!(WRONG.load(Relaxed), 0);
}
