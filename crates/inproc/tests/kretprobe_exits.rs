//! Return probes watched at the function's exits, against the programs that break return
//! address hijacking (the tail-call pair is in `kretprobe_shapes.rs`): a C++ exception through two probed frames into a probed catcher, a
//! signal handler on an alternate stack recursing in a probed function, recursion 10,000
//! deep, a function that reads its own return address, four threads calling while the probe
//! is registered and unregistered in a loop, an earlier probe removed while a call is pending.
//! The mode chosen and why, the fallback for a
//! function whose exits are not all known, and the bytes put back.
mod fixtures;
use fixtures::checked;

use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

fn is_exits(p: &ReturnProbe) -> bool {
    matches!(p.return_mode(), ReturnMode::Exits { .. })
}

/// (returns, missed, abandoned, pending)
fn figures(p: &ReturnProbe) -> (u64, u64, u64, u64) {
    let st = p.stats();
    (st.returns, st.missed + st.reentered, st.abandoned, p.pending())
}

#[test]
fn a_cpp_exception_through_two_probed_frames_into_a_probed_catcher() {
    const N: i64 = 2000;
    for via_return_address in [false, true] {
        // SAFETY: the catcher returns -x - 1 for x >= 0, x + 1 otherwise.
        let untraced: Vec<i64> = (-3..N).map(|i| unsafe { c::fxcpp_catch_two(black_box(i)) }).collect();
        let probes: Vec<ReturnProbe> =
            [c::fxcpp_catch_two as *const (), c::fxcpp_pass as *const (), c::fxcpp_thrower as *const ()]
                .into_iter()
                .map(|f| {
                    let k = Kretprobe::addr(at(f)).maxactive(4).handler(|_, _| {});
                    register_kretprobe(if via_return_address { k.via_return_address() } else { k }).unwrap()
                })
                .collect();
        // SAFETY: the catcher returns -x - 1 for x >= 0, x + 1 otherwise.
        let traced: Vec<i64> = (-3..N).map(|i| unsafe { c::fxcpp_catch_two(black_box(i)) }).collect();
        assert_eq!(traced, untraced);
        let [catcher, pass, thrower] = [&probes[0], &probes[1], &probes[2]].map(figures);
        if via_return_address {
            // The unwinder is shown the real return addresses before it walks: every pending
            // return of the thread counts as abandoned, the catcher's too.
            assert_eq!(catcher, (3, 0, N as u64, 0));
        } else {
            // At the exits, the catcher returns normally each time; the two frames the
            // exception went through are found abandoned at the catcher's exit.
            assert!(probes.iter().all(is_exits));
            assert_eq!(catcher, (N as u64 + 3, 0, 0, 0));
            assert_eq!(pass, (3, 0, N as u64, 0));
            assert_eq!(thrower, (3, 0, N as u64, 0));
        }
        let _ = (pass, thrower);
    }
}

#[test]
fn longjmp_out_of_a_probed_function_at_its_exits() {
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let victim = checked(c::fxc_victim as *const (), |x| x, &WRONG, false);
    let jumper = checked(c::fxc_jump_out as *const (), |x| if (x as i64) < 0 { x } else { u64::MAX }, &WRONG, false);
    assert!(is_exits(&victim) && is_exits(&jumper));
    for i in 0..5000 {
        // SAFETY: fxc_jump_out setjmps, calls fxc_victim, which longjmps back: returns -1.
        assert_eq!(unsafe { c::fxc_jump_out(black_box(i)) }, -1);
    }
    // SAFETY: a negative argument returns normally.
    assert_eq!(unsafe { c::fxc_jump_out(black_box(-7)) }, -7);
    // Every longjmp's victim frame is found abandoned at its caller's exit.
    assert_eq!(figures(&victim), (1, 0, 5000, 0));
    assert_eq!(figures(&jumper), (5001, 0, 0, 0));
    assert_eq!(WRONG.load(Relaxed), 0);
}

#[test]
fn a_signal_handler_on_an_alternate_stack_recursing_in_a_probed_function() {
    const OUTER: i64 = 100;
    const IN_HANDLER: i64 = 50;
    for (via_return_address, above) in [(false, true), (false, false), (true, true), (true, false)] {
        static WRONG: AtomicU64 = AtomicU64::new(0);
        let outer = checked(c::fxc_signal_recurse as *const (), |n| n + IN_HANDLER as u64, &WRONG, via_return_address);
        let nested = checked(c::fxc_recurse as *const (), |n| n, &WRONG, via_return_address);
        std::thread::scope(|s| {
            s.spawn(|| fixtures::recurse_in_alt_stack_handler(above, 256 * 1024, OUTER, IN_HANDLER, 20));
        });
        let mode = (outer.return_mode().clone(), via_return_address, above);
        assert_eq!(figures(&outer), (20 * (OUTER as u64 + 1), 0, 0, 0), "{mode:?}");
        assert_eq!(figures(&nested), (20 * (IN_HANDLER as u64 + 1), 0, 0, 0), "{mode:?}");
        assert_eq!(WRONG.swap(0, Relaxed), 0, "{mode:?}");
    }
}

#[test]
fn recursion_ten_thousand_deep_every_return_seen() {
    static DEPTHS: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_recurse as *const ())).maxactive(10_001).handler(|r, _| {
        DEPTHS.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    assert!(is_exits(&p), "{:?}", p.return_mode());
    for _ in 0..3 {
        // SAFETY: fxc_recurse(n) recurses n deep and returns n.
        assert_eq!(unsafe { c::fxc_recurse(black_box(10_000)) }, 10_000);
    }
    assert_eq!(figures(&p), (3 * 10_001, 0, 0, 0));
    assert_eq!(DEPTHS.load(Relaxed), 3 * (0..=10_000).sum::<u64>(), "every level saw its own return value");
}

#[test]
fn a_function_that_reads_its_own_return_address_sees_the_real_one() {
    // SAFETY: returns the address its caller resumes at.
    let untraced = unsafe { c::fxc_ask_own_return() };
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_own_return as *const ())).handler(|_, _| {})).unwrap();
    assert!(is_exits(&p));
    // SAFETY: as above.
    assert_eq!(unsafe { c::fxc_ask_own_return() }, untraced);
    assert_eq!(figures(&p), (1, 0, 0, 0));
    drop(p);
    // Through the return address, the function sees dprobe's trampoline instead.
    let p =
        register_kretprobe(Kretprobe::addr(at(c::fxc_own_return as *const ())).via_return_address().handler(|_, _| {}))
            .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { c::fxc_ask_own_return() } as u64, trampoline_addr());
    assert_eq!(figures(&p), (1, 0, 0, 0));
}

/// The first `len` bytes of `f`.
fn code(f: *const (), len: usize) -> Vec<u8> {
    fixtures::code(at(f), len)
}

#[test]
fn four_threads_call_while_the_probe_comes_and_goes() {
    let f = c::fxc_middle as *const ();
    let original = code(f, 32);
    let call = |t: u64, i: u64| {
        let x = (t * 1_000_000 + i) as i64;
        // SAFETY: fxc_middle(a) = a + 2 through fxc_add.
        assert_eq!(unsafe { c::fxc_middle(black_box(x)) }, x + 2);
    };
    fixtures::with_four_callers(call, |callers| {
        let (mut seen, mut cycles) = (0, 0);
        while cycles < 200 || seen < 1000 {
            static WRONG: AtomicU64 = AtomicU64::new(0);
            let p = checked(f, |x| x + 2, &WRONG, false);
            assert!(is_exits(&p));
            if cycles == 0 {
                assert_ne!(code(f, 32), original, "the probes are in the code");
            }
            callers.wait_calls(20);
            let pending = p.pending();
            // The figures once the probe is gone, which no thread changes any more (read
            // while the callers run on, two counters are never read at one instant).
            let st = p.unregister().unwrap();
            // Every call the entry saw returned, was missed, or was still in flight (its return
            // came after the probe went: not seen).
            let after = (st.hits, st.returns + st.missed + st.abandoned);
            assert!(after.0 >= after.1 && after.0 - after.1 <= 4 + pending, "{st:?} pending {pending}");
            assert_eq!(WRONG.load(Relaxed), 0);
            seen += st.returns;
            cycles += 1;
        }
    });
    assert_eq!(code(f, 32), original, "every byte is back");
}

std::arch::global_asm!(
    ".text",
    // Leaves through `jmp rax`: its exits cannot all be known.
    ".globl fx_jump_through_register",
    ".type fx_jump_through_register,@function",
    "fx_jump_through_register:",
    "mov rax, rsi",
    "jmp rax",
    ".size fx_jump_through_register, . - fx_jump_through_register",
    ".globl fx_plus_one",
    ".type fx_plus_one,@function",
    "fx_plus_one:",
    "lea rax, [rdi + 1]",
    "ret",
    ".size fx_plus_one, . - fx_plus_one",
);

extern "C" {
    fn fx_jump_through_register(x: u64, to: extern "C" fn()) -> u64;
    fn fx_plus_one(x: u64) -> u64;
}

#[test]
fn a_function_whose_exits_are_not_all_known_falls_back_to_the_return_address() {
    static SUM: AtomicU64 = AtomicU64::new(0);
    let f = fx_jump_through_register as *const ();
    let original = code(f, 5);
    let p = register_kretprobe(Kretprobe::addr(at(f)).handler(|r, _| {
        SUM.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    let ReturnMode::ReturnAddress { why } = p.return_mode() else { panic!("{:?}", p.return_mode()) };
    assert!(why.contains("indirect jump") && why.contains("jmp *%rax"), "{why}");
    // SAFETY: jumps to fx_plus_one with x in rdi, which returns x + 1 to our caller.
    let to: extern "C" fn() = unsafe { std::mem::transmute(fx_plus_one as *const ()) };
    for x in 0..10 {
        // SAFETY: as above.
        assert_eq!(unsafe { fx_jump_through_register(black_box(x), to) }, x + 1);
    }
    assert_eq!(figures(&p), (10, 0, 0, 0));
    assert_eq!(SUM.load(Relaxed), (1..=10).sum::<u64>());
    drop(p);
    assert_eq!(code(f, 5), original);
}

#[test]
fn more_return_probes_than_one_call_lists_fall_back_and_all_run() {
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    let f = c::fxc_outer as *const ();
    let original = code(f, 24);
    let probes: Vec<ReturnProbe> = (0..PER_CALL + 1)
        .map(|_| {
            register_kretprobe(Kretprobe::addr(at(f)).handler(|r, _| {
                assert_eq!(r.rax, 4);
                RETURNS.fetch_add(1, Relaxed);
            }))
            .unwrap()
        })
        .collect();
    assert!(probes[..PER_CALL].iter().all(is_exits));
    let ReturnMode::ReturnAddress { why } = probes[PER_CALL].return_mode() else { panic!() };
    assert!(why.contains("the most one call lists"), "{why}");
    // SAFETY: fxc_outer(a) = a + 3.
    assert_eq!(unsafe { c::fxc_outer(black_box(1)) }, 4);
    assert_eq!(RETURNS.load(Relaxed), PER_CALL as u64 + 1);
    drop(probes);
    assert_eq!(code(f, 24), original, "every byte is back");
}

/// A return probe registered before this one, taken away while a call is pending: the
/// registry's indices shift under the pending call (each activation notes where its probes
/// were), and its return is still found, by this probe's handler alone.
#[test]
fn a_probe_removed_while_a_call_is_pending_leaves_its_return_found() {
    use std::sync::Mutex;
    static EARLIER: Mutex<Vec<ReturnProbe>> = Mutex::new(Vec::new());
    static SEEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    static LATER_RETURNS: AtomicU64 = AtomicU64::new(0);
    extern "C" fn take_one_away(x: i64) -> i64 {
        // Not inside a handler: the program's own code, in the middle of the probed call.
        drop(EARLIER.lock().unwrap().pop());
        x * 2
    }
    const N: i64 = 6;
    *EARLIER.lock().unwrap() = (0..N)
        .map(|_| register_kretprobe(Kretprobe::addr(at(c::fxc_add as *const ())).handler(|_, _| {})).unwrap())
        .collect();
    let probe = register_kretprobe(
        Kretprobe::addr(at(c::fxc_call_back as *const ())).handler(|r, _| SEEN.lock().unwrap().push(r.rax)),
    )
    .unwrap();
    // Registered after the probe: the places the removals shift onto it are another probe's.
    let later = register_kretprobe(Kretprobe::addr(at(c::fxc_middle as *const ())).handler(|_, _| {
        LATER_RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert!(is_exits(&probe));
    for i in 0..N {
        // SAFETY: fxc_call_back(cb, x) = cb(x) + 1.
        assert_eq!(unsafe { c::fxc_call_back(take_one_away, black_box(i)) }, 2 * i + 1);
    }
    assert!(EARLIER.lock().unwrap().is_empty());
    assert_eq!(*SEEN.lock().unwrap(), (0..N).map(|i| (2 * i + 1) as u64).collect::<Vec<_>>());
    assert_eq!(figures(&probe), (N as u64, 0, 0, 0));
    assert_eq!(LATER_RETURNS.load(Relaxed), 0);
    drop(later);
}
