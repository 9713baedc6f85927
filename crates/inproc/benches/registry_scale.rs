//! Registry scale: how long one batch of 10,000 probes takes to register and unregister, and
//! what one hit costs with 1, 100, 1,000 and 10,000 probes registered.
//!
//! `cargo bench -p dprobe-inproc --bench registry_scale` prints medians over interleaved
//! rounds. Each round registers, for each size, one batch: the measured function's probe plus
//! probes on other functions (generated ones, and from the 10,000 batch on, every exported
//! function of the C library that can be probed), measures, and unregisters the batch.
//!
//! Registration and unregistration are given as wall time and as the registering thread's
//! CPU time (on a loaded machine the wall time also counts waits for a CPU). The first
//! registration of the 10,000 batch, which also analyzes every function and builds every
//! slot and detour, is measured once before the rounds; a site keeps that work for the
//! registrations after it.
//!
//! * **same function**: `N` calls of one generated function (a 5-byte nop first: its probe is
//!   a jump), minus the same calls with no probe registered;
//! * **spread**: one call of each of the first 1,000 probed generated functions in turn (a
//!   different detour each call), minus the same calls unprobed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dprobe_inproc::{register_all, unregister_all, Addr};

#[path = "../tests/scale/mod.rs"]
mod scale;

const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];
const ROUNDS: usize = 11;
const CALLS: u64 = 200_000;
const SPREAD: usize = 1_000;

/// `CALLS` calls of generated function 0; ns per call.
fn same_function() -> f64 {
    let f = scale::generated()[0];
    let t = Instant::now();
    for i in 0..CALLS {
        // SAFETY: generated functions only add.
        black_box(unsafe { black_box(f)(black_box(i)) });
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

/// One call of each of the first `SPREAD` generated functions, `CALLS / SPREAD` times over;
/// ns per call.
fn spread() -> f64 {
    let fs = &scale::generated()[..SPREAD];
    let t = Instant::now();
    for i in 0..CALLS / SPREAD as u64 {
        for f in fs {
            // SAFETY: as above.
            black_box(unsafe { black_box(*f)(black_box(i)) });
        }
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

/// This thread's CPU time: on a loaded machine, wall time also counts the waits for a CPU.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the calling thread's CPU clock into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The first registration of the 10,000 batch in this process, when every function is read
/// and analyzed, every slot and detour built: printed, as wall and CPU time, with its
/// unregistration.
fn first_batch(libc: &[Addr]) {
    let mut addrs: Vec<Addr> = (0..SIZES[3] - libc.len()).map(scale::addr).collect();
    addrs.extend(libc);
    let (t, cpu) = (Instant::now(), thread_cpu());
    let Ok(probes) = register_all(scale::probes(&addrs)) else {
        println!("first batch: refused (some C library function cannot be probed), not measured");
        return;
    };
    let (reg, reg_cpu) = (t.elapsed().as_secs_f64() * 1e3, (thread_cpu() - cpu).as_secs_f64() * 1e3);
    let (t, cpu) = (Instant::now(), thread_cpu());
    unregister_all(probes).expect("unregister");
    let (unreg, unreg_cpu) = (t.elapsed().as_secs_f64() * 1e3, (thread_cpu() - cpu).as_secs_f64() * 1e3);
    println!(
        "first batch of {} (every function analyzed, every slot and detour built): \
         register {reg:.1} ms ({reg_cpu:.1} cpu), unregister {unreg:.1} ms ({unreg_cpu:.1} cpu)",
        SIZES[3]
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // Generated functions 0..SPREAD are in every batch of SPREAD probes or more; the C
    // library's functions are all in the largest batch.
    let mut libc: Vec<Addr> = scale::libc_functions().into_iter().map(|(_, a)| a).collect();
    first_batch(&libc);
    let refused = scale::placeable(&mut libc);
    let batch = |n: usize| -> Vec<Addr> {
        let from_libc = if n == SIZES[3] { libc.len() } else { 0 };
        let mut addrs: Vec<Addr> = (0..n - from_libc).map(scale::addr).collect();
        addrs.extend(&libc[..from_libc]);
        addrs
    };
    let batches: Vec<Vec<Addr>> = SIZES.iter().map(|&n| batch(n)).collect();
    println!(
        "{} C library functions probed in the 10,000 batch ({} refused), {} generated",
        libc.len(),
        refused.len(),
        SIZES[3] - libc.len()
    );
    let (mut plain, mut plain_spread) = (Vec::new(), Vec::new());
    let mut hit = vec![Vec::new(); SIZES.len()];
    let mut hit_spread = vec![Vec::new(); SIZES.len()];
    let (mut reg, mut unreg) = (vec![Vec::new(); SIZES.len()], vec![Vec::new(); SIZES.len()]);
    let (mut reg_cpu, mut unreg_cpu) = (vec![Vec::new(); SIZES.len()], vec![Vec::new(); SIZES.len()]);
    for _ in 0..ROUNDS {
        plain.push(same_function());
        plain_spread.push(spread());
        for (k, addrs) in batches.iter().enumerate() {
            let kprobes = scale::probes(addrs);
            let (t, cpu) = (Instant::now(), thread_cpu());
            let probes = register_all(kprobes).expect("the batch");
            reg[k].push(t.elapsed().as_secs_f64() * 1e3);
            reg_cpu[k].push((thread_cpu() - cpu).as_secs_f64() * 1e3);
            assert_eq!(probes[0].optimized(), Ok(()), "the measured probe is a jump");
            hit[k].push(same_function());
            if addrs.len() >= SPREAD {
                hit_spread[k].push(spread());
            }
            let (t, cpu) = (Instant::now(), thread_cpu());
            unregister_all(probes).expect("unregister");
            unreg[k].push(t.elapsed().as_secs_f64() * 1e3);
            unreg_cpu[k].push((thread_cpu() - cpu).as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (plain, plain_spread) = (median(&mut plain), median(&mut plain_spread));
    println!("\nmedians of {ROUNDS} interleaved rounds ({CALLS} calls per measure):");
    println!("plain call: {plain:.1} ns; spread over {SPREAD} functions: {plain_spread:.1} ns");
    println!("register and unregister: wall time, and the registering thread's CPU time");
    println!(
        "{:>8} {:>20} {:>20} {:>18} {:>18}",
        "probes", "register ms (cpu)", "unregister ms (cpu)", "hit, same fn (ns)", "hit, spread (ns)"
    );
    for (k, n) in SIZES.iter().enumerate() {
        let spread = if hit_spread[k].is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(&mut hit_spread[k]) - plain_spread)
        };
        let reg = format!("{:.1} ({:.1})", median(&mut reg[k]), median(&mut reg_cpu[k]));
        let unreg = format!("{:.1} ({:.1})", median(&mut unreg[k]), median(&mut unreg_cpu[k]));
        println!("{:>8} {:>20} {:>20} {:>18.1} {:>18}", n, reg, unreg, median(&mut hit[k]) - plain, spread);
    }
}
