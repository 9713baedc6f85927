//! Per-hit cost of one probe hit by several threads at once: what a multi-threaded program
//! pays when all its threads call a probed function.
//!
//! `cargo bench -p dprobe-inproc --bench thread_scaling` (not pinned to one CPU: the threads
//! must run on different cores) prints, for 1, 2 and 4 threads each making `N` calls, the
//! wall time of a round over `N` (ns per call in each thread), medians over interleaved
//! rounds, minus the same calls of the unprobed function, and the ratio to one thread:
//!
//! * jump-optimized: a probe on a function's first instruction (a 5-byte nop) whose
//!   pre-handler does nothing: dprobe's own work alone, its hit count included;
//! * return probe, both jumps: a return probe on a function whose entry and `ret` are both
//!   jumps, with a return handler that does nothing;
//! * the same probe on int3: the entry probe's function again, its probe registered with
//!   `no_optimize` (a tenth of the calls: each is a trap). The kernel delivers each trap's
//!   `SIGTRAP` under a lock its process's threads share.
//!
//! With as many threads as cores, a hit should cost what it costs one thread; with more
//! threads than cores, the threads take turns: the per-call time grows with threads / cores.
//! Every probe's count is checked against the calls made.

use std::hint::black_box;
use std::time::Instant;

use dprobe_inproc::{register, register_kretprobe, Addr, Kprobe, Kretprobe, PreAction};

std::arch::global_asm!(
    ".text",
    ".globl scale_plain",
    ".type scale_plain,@function",
    "scale_plain:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size scale_plain, . - scale_plain",
    ".globl scale_jump",
    ".type scale_jump,@function",
    "scale_jump:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size scale_jump, . - scale_jump",
    ".globl scale_return",
    ".type scale_return,@function",
    "scale_return:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size scale_return, . - scale_return",
    ".globl scale_int3",
    ".type scale_int3,@function",
    "scale_int3:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size scale_int3, . - scale_int3",
);

extern "C" {
    fn scale_plain(x: u64) -> u64;
    fn scale_jump(x: u64) -> u64;
    fn scale_return(x: u64) -> u64;
    fn scale_int3(x: u64) -> u64;
}

type Target = unsafe extern "C" fn(u64) -> u64;

const THREADS: [usize; 3] = [1, 2, 4];
const ROUNDS: usize = 21;
const N: u64 = 500_000;

/// Wall time of `threads` threads each making `n` calls of `f`, started together, over `n`.
fn round(f: Target, n: u64, threads: usize) -> f64 {
    let start = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    for i in 0..n {
                        // SAFETY: the bench functions return their argument.
                        black_box(unsafe { black_box(f)(black_box(i)) });
                    }
                })
            })
            .collect();
        // Before the barrier lets the threads go: taken after it, the time would miss the
        // threads that run while this one waits for a core.
        let t = Instant::now();
        start.wait();
        for w in workers {
            w.join().expect("a bench thread");
        }
        t.elapsed().as_nanos() as f64 / n as f64
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let at = |f: Target| Addr(f as *const () as u64);
    let jump = register(Kprobe::addr(at(scale_jump)).pre(|_| PreAction::Continue)).expect("the entry probe");
    assert_eq!(jump.optimized(), Ok(()), "the entry row measures a jump");
    let returns = register_kretprobe(Kretprobe::addr(at(scale_return)).handler(|_, _| {})).expect("the return probe");
    let jumps = |a: Addr| dprobe_inproc::list().into_iter().find(|i| i.addr == a).map(|i| i.jump);
    let (entry, ret) = (at(scale_return), at(scale_return).offset(10));
    assert_eq!((jumps(entry), jumps(ret)), (Some(Ok(())), Some(Ok(()))), "both sides of the return probe are jumps");

    let trap =
        register(Kprobe::addr(at(scale_int3)).pre(|_| PreAction::Continue).no_optimize()).expect("the int3 probe");
    let rows: [(&str, Target, u64); 4] = [
        ("plain call", scale_plain, N),
        ("jump-optimized", scale_jump, N),
        ("return probe, both jumps", scale_return, N),
        ("the same probe on int3", scale_int3, N / 10),
    ];
    let mut samples = vec![vec![Vec::new(); THREADS.len()]; rows.len()];
    for _ in 0..ROUNDS {
        for (t, &threads) in THREADS.iter().enumerate() {
            for (r, (_, f, n)) in rows.iter().enumerate() {
                samples[r][t].push(round(*f, *n, threads));
            }
        }
    }
    let calls = ROUNDS as u64 * N * THREADS.iter().sum::<usize>() as u64;
    assert_eq!(jump.hits(), calls, "the entry probe's count");
    assert_eq!(trap.hits(), calls / 10, "the int3 probe's count");
    let stats = returns.stats();
    assert_eq!((stats.hits, stats.returns, stats.missed), (calls, calls, 0), "the return probe's counts");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nns per call in each thread, median of {ROUNDS} interleaved rounds of {N} calls a thread ({cores} cores):"
    );
    print!("{:<28}", "path");
    for threads in THREADS {
        print!(" {:>12}", format!("{threads} thread{}", if threads > 1 { "s" } else { "" }));
    }
    println!();
    let medians: Vec<Vec<f64>> = samples.into_iter().map(|row| row.into_iter().map(median).collect()).collect();
    for (r, (name, ..)) in rows.iter().enumerate() {
        print!("{name:<28}");
        for m in &medians[r] {
            print!(" {m:>12.1}");
        }
        println!();
    }
    for (r, (name, ..)) in rows.iter().enumerate().skip(1) {
        let hit: Vec<f64> = (0..THREADS.len()).map(|t| medians[r][t] - medians[0][t]).collect();
        let ratios: Vec<String> = hit.iter().map(|h| format!("{:.2}", h / hit[0])).collect();
        println!(
            "{name}, over the plain call: {} ns; against one thread: {}",
            hit.iter().map(|h| format!("{h:.1}")).collect::<Vec<_>>().join(" / "),
            ratios.join(" / ")
        );
    }
}
