//! Ten thousand probes (the C library's exported functions and generated ones) registered in
//! one batch and unregistered in one, while four threads call the probed functions.
mod scale;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use dprobe_inproc::{register_all, unregister_all, Addr, Kprobe, ProbeError};

const PROBES: usize = 10_000;
/// Calls of each sampled function by each thread, counted exactly.
const CALLS: u64 = 50;

fn bytes(addrs: &[Addr]) -> Vec<[u8; 8]> {
    addrs
        .iter()
        .map(|a| {
            let mut b = [0u8; 8];
            // SAFETY: every target is a function of at least 5 bytes in mapped code; the 8
            // bytes read stay inside the function or the padding after it (generated ones
            // are 16-byte aligned, libc's are followed by more code).
            unsafe { std::ptr::copy_nonoverlapping(a.0 as *const u8, b.as_mut_ptr(), 5) };
            b
        })
        .collect()
}

/// Four threads calling every `step`-th generated function of `range` until `stop`, each call
/// checked against the function's result.
fn churn(range: std::ops::Range<usize>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    (0..4)
        .map(|t| {
            let (range, stop) = (range.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Relaxed) {
                    for i in range.clone().skip(t).step_by(7) {
                        scale::call(i, calls);
                        calls += 1;
                    }
                    // Leave the registrar some of the two cores.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                calls
            })
        })
        .collect()
}

#[test]
fn ten_thousand_probes_go_in_and_out_in_one_batch_under_four_calling_threads() {
    let (mut addrs, generated) = scale::targets(PROBES, PROBES);
    let libc = addrs.len() - generated.len();
    let refused = scale::placeable(&mut addrs);
    println!("{libc} C library functions, {} refused:", refused.len());
    for e in &refused {
        println!("  {e}");
    }
    // Fill up to the full count with more generated functions (there are enough).
    let used = addrs.len() - (libc - refused.len());
    let more = generated.end..generated.end + (PROBES - addrs.len());
    addrs.extend(more.clone().map(scale::addr));
    let generated = generated.start..generated.start + used + more.len();
    assert_eq!(addrs.len(), PROBES);
    let original = bytes(&addrs);

    // One probe that cannot be placed refuses the whole batch: nothing is patched.
    // Here: a name that does not exist, then the middle of an instruction.
    let mid = addrs[PROBES - 1].offset(2);
    for bad in [Kprobe::symbol("dprobe_no_such_function_anywhere"), Kprobe::addr(mid)] {
        let mut with_bad = scale::probes(&addrs);
        with_bad.insert(PROBES / 2, bad);
        let refused = register_all(with_bad).expect_err("a batch with a probe that cannot be placed");
        assert!(
            matches!(refused, ProbeError::Target(_)) || refused.to_string().contains(&mid.to_string()),
            "{refused}"
        );
        assert_eq!(bytes(&addrs), original, "a refused batch patches nothing");
        assert!(dprobe_inproc::list().is_empty());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let callers = churn(generated.clone(), &stop);
    let t = Instant::now();
    let probes = register_all(scale::probes(&addrs)).expect("the batch");
    let took = t.elapsed();
    stop.store(true, Relaxed);
    let churned: u64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    let jumps = probes.iter().filter(|p| p.optimized().is_ok()).count();
    println!("registered {PROBES} probes in {took:?} ({jumps} jump-optimized) under {churned} calls");
    let first_generated = PROBES - generated.len();
    for (p, i) in probes[first_generated..].iter().zip(generated.clone()) {
        assert_eq!(p.optimized(), Ok(()), "scale_fn_{i}");
    }

    // Exact counts on a sample: each of four threads calls each sampled function CALLS times.
    let sample: Vec<usize> = generated.clone().step_by(97).collect();
    let before: Vec<u64> = sample.iter().map(|&i| probes[first_generated + i - generated.start].hits()).collect();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let sample = sample.clone();
            std::thread::spawn(move || {
                for &i in &sample {
                    for c in 0..CALLS {
                        scale::call(i, t * CALLS + c);
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("caller"));
    for (&i, b) in sample.iter().zip(before) {
        let p = &probes[first_generated + i - generated.start];
        assert_eq!((p.hits() - b, p.nmissed()), (4 * CALLS, 0), "scale_fn_{i}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let callers = churn(generated, &stop);
    let t = Instant::now();
    unregister_all(probes).expect("unregister the batch");
    println!("unregistered them in {:?}", t.elapsed());
    stop.store(true, Relaxed);
    callers.into_iter().for_each(|c| {
        c.join().expect("caller");
    });
    assert_eq!(bytes(&addrs), original, "every byte restored");
    assert!(dprobe_inproc::list().is_empty());
}
