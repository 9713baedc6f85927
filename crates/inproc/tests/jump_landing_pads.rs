//! C++ exceptions through functions probed at every instruction, the engine choosing jump or
//! `int3` for each. The unwinder resumes a frame at its landing pad, an address no branch names:
//! a jump written over the bytes before a landing pad would have every throw resume in the
//! middle of the `jmp rel32`. `landing_pads.cpp` compiles one try/catch eight times, at -O0
//! and -O2, with its landing pad aligned to 8 bytes (after padding of every length at -O2); the
//! padding is instructions a probe can sit on.
//!
//! Each probe is placed alone and then all of them at once, while threads throw and catch
//! through the function: the program's results are those of an unprobed run, each probe's hits
//! those of the same probe on `int3`, the bytes are restored, and the windows covering a
//! landing pad stay on `int3` with the reason saying so.

use std::hint::black_box;
use std::sync::{Arc, Barrier};

use dprobe_inproc::{register_all, unregister_all, Addr, Kprobe, NotOptimized, PreAction, Probe};
use dprobe_sym::{read_maps, Symbols};
use dprobe_test_fixtures::{fxeh_catch_copy_o0, fxeh_catch_copy_o2};
use iced_x86::{Decoder, DecoderOptions};

type CatchFn = unsafe extern "C" fn(i64) -> i64;

const THREADS: i64 = 3;
/// Calls per thread and run; every odd argument throws.
const CALLS: i64 = 40;

/// What each copy computes: 3x for an even x, -x for an odd one (thrown and caught).
fn expected(x: i64) -> i64 {
    if x % 2 == 0 {
        3 * x
    } else {
        -x
    }
}

fn argument(thread: i64, i: i64) -> i64 {
    thread * 1000 + i
}

/// Each thread's sum of `f` over its arguments, the threads starting together.
fn run(f: CatchFn) -> Vec<i64> {
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                // SAFETY: the fixture computes on its argument only; what its callee throws it
                // catches itself.
                (0..CALLS).map(|i| unsafe { black_box(f)(black_box(argument(t, i))) }).sum::<i64>()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("a calling thread")).collect()
}

/// `n` bytes of mapped code at `a`.
fn code(a: Addr, n: u64) -> Vec<u8> {
    // SAFETY: `a..a + n` is a function of this test binary, mapped for its whole life.
    (0..n).map(|i| unsafe { std::ptr::read_volatile((a.0 + i) as *const u8) }).collect()
}

/// The start of every instruction of the `size` bytes of code at `start`, decoded linearly
/// (padding included: a probe can be placed on it).
fn instructions(start: Addr, size: u64) -> Vec<Addr> {
    let bytes = code(start, size);
    Decoder::with_ip(64, &bytes, start.0, DecoderOptions::NONE).iter().map(|i| Addr(i.ip())).collect()
}

/// A counting probe on each of `addrs`; on `int3` unless `optimize`, where the engine decides.
fn place(addrs: &[Addr], optimize: bool) -> Vec<Probe> {
    let probes = addrs.iter().map(|&a| {
        let k = Kprobe::addr(a).pre(|_| PreAction::Continue);
        if optimize {
            k
        } else {
            k.no_optimize()
        }
    });
    register_all(probes.collect()).expect("every instruction of the function can be probed")
}

/// What one copy showed.
#[derive(Default)]
struct Seen {
    jumps: usize,
    /// `(probe, landing pad)` of each probe refused for a landing pad.
    landing_pads: Vec<(Addr, Addr)>,
}

/// Probe every instruction of `f` (and of its `.cold` part) alone and then all together.
fn probe_every_instruction(f: CatchFn, symbols: &Symbols) -> Seen {
    let function = symbols.containing(Addr(f as usize as u64)).expect("the copy's symbol");
    let name = function.name.clone();
    let mut parts = vec![(function.start, function.size)];
    parts.extend(symbols.cold_part(function).map(|c| (c.start, c.size)));
    let original: Vec<Vec<u8>> = parts.iter().map(|&(a, n)| code(a, n)).collect();
    let addrs: Vec<Addr> = parts.iter().flat_map(|&(a, n)| instructions(a, n)).collect();
    let restored = |when: &str| {
        for (&(a, n), bytes) in parts.iter().zip(&original) {
            assert_eq!(&code(a, n), bytes, "{name}: the bytes at {a} are back {when}");
        }
    };

    let unprobed = run(f);
    let sums: Vec<i64> = (0..THREADS).map(|t| (0..CALLS).map(|i| expected(argument(t, i))).sum()).collect();
    assert_eq!(unprobed, sums, "{name} unprobed");
    let throws = (THREADS * CALLS / 2) as u64;

    // The reference: every instruction on int3.
    let traps = place(&addrs, false);
    assert_eq!(run(f), unprobed, "{name} with every instruction on int3");
    let reference: Vec<u64> = traps.iter().map(Probe::hits).collect();
    unregister_all(traps).unwrap();
    restored("after the int3 run");
    assert_eq!(reference[0], (THREADS * CALLS) as u64, "{name}: its entry runs once a call");
    // The landing pads the object's exception tables give for the copy: where the throws
    // resume, each either run once a throw (the callee's) or never (those of its other calls).
    let data = std::fs::read(&*function.object).unwrap();
    let pads = dprobe_sym::landing_pads(&data).expect("the test binary's exception tables");
    let inside = |a: Addr| parts.iter().any(|&(start, n)| a >= start && a < start.offset(n));
    let pads: Vec<Addr> = pads.iter().map(|p| p.pad.offset(function.bias)).filter(|&p| inside(p)).collect();
    let runs = |pad: Addr| addrs.iter().position(|&i| i == pad).map(|k| reference[k]);
    let counts: Vec<_> = pads.iter().map(|&p| runs(p)).collect();
    assert!(counts.iter().all(|c| *c == Some(0) || *c == Some(throws)), "{name}: pads {pads:?} ran {counts:?}");
    assert!(counts.contains(&Some(throws)), "{name}: a pad runs once a throw: {pads:?} ran {counts:?}");

    let mut seen = Seen::default();
    for (k, &a) in addrs.iter().enumerate() {
        let probe = place(&[a], true).pop().unwrap();
        let how = probe.optimized();
        assert_eq!(run(f), unprobed, "{name}: probed at {a} alone ({how:?})");
        assert_eq!(probe.hits(), reference[k], "{name}: hits at {a} alone ({how:?})");
        match how {
            Ok(()) => seen.jumps += 1,
            Err(NotOptimized::LandingPadInWindow { pad, calls }) => {
                assert!(pad > a && pad < a.offset(5), "{name}: the pad {pad} is inside the jump at {a}");
                let at = addrs.iter().position(|&i| i == pad).expect("the pad is an instruction's start");
                assert_eq!(reference[at], throws, "{name}: each throw through {calls} resumes at {pad}");
                seen.landing_pads.push((a, pad));
            }
            Err(_) => {}
        }
        probe.unregister().unwrap();
        restored(&format!("after the probe at {a}"));
    }

    let all = place(&addrs, true);
    assert_eq!(run(f), unprobed, "{name} with every instruction probed at once");
    let hits: Vec<u64> = all.iter().map(Probe::hits).collect();
    assert_eq!(hits, reference, "{name}: every probe's hits, all placed at once");
    unregister_all(all).unwrap();
    restored("after all the probes");
    seen
}

#[test]
fn throws_through_every_probed_instruction_resume_at_their_landing_pads() {
    let symbols = Symbols::load(&read_maps().unwrap());
    for (level, copy) in [("-O0", fxeh_catch_copy_o0 as unsafe extern "C" fn(i32) -> _), ("-O2", fxeh_catch_copy_o2)] {
        let (mut jumps, mut pads) = (0, Vec::new());
        // SAFETY: the lookup only indexes a table of the fixture's functions.
        for f in (0..).map_while(|k| unsafe { copy(k) }) {
            let seen = probe_every_instruction(f, &symbols);
            jumps += seen.jumps;
            pads.extend(seen.landing_pads);
        }
        println!("{level}: {jumps} probes jump-optimized, {} kept off a landing pad: {pads:x?}", pads.len());
        assert!(jumps > 0, "{level}: some probes are jumps");
        assert!(!pads.is_empty(), "{level}: padding before a landing pad is probed, and its jump refused");
    }
}
