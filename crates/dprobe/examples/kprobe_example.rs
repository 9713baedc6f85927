//! The article's first example, in user space: a kprobe on a scheduling point.
//!
//! The kernel module probed `schedule()` and printed, from its pre- and post-handlers, which
//! task was on which CPU. Here worker threads call libc's `sched_yield`, which dprobe probes
//! in this very process. Handlers run in signal context and must not print, so they keep a
//! few samples in a fixed lock-free buffer that the main thread prints afterwards.
//!
//! Run: `cargo run --release --example kprobe_example [MILLISECONDS]`

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dprobe::inproc::{register, Kprobe, PreAction};

const WORKERS: usize = 4;
const SAMPLES: usize = 8;

/// One sample: thread id, CPU, and whether it was taken before or after the instruction.
static SAMPLE: [AtomicU64; SAMPLES] = [const { AtomicU64::new(0) }; SAMPLES];
static NEXT_SAMPLE: AtomicUsize = AtomicUsize::new(0);

/// Record a sample if there is room. Async-signal-safe: atomics and two system calls.
fn sample(after: bool) {
    let i = NEXT_SAMPLE.fetch_add(1, Relaxed);
    if i < SAMPLES {
        // SAFETY: gettid and sched_getcpu take no arguments and have no preconditions.
        let (tid, cpu) = unsafe { (libc::gettid() as u64, libc::sched_getcpu() as u64) };
        SAMPLE[i].store(tid << 32 | (cpu & 0xffff) << 1 | u64::from(after), Relaxed);
    }
}

/// Thread ids and names, recorded by each worker when it starts (outside any handler).
static NAMES: std::sync::Mutex<Vec<(u64, String)>> = std::sync::Mutex::new(Vec::new());

fn thread_name(tid: u64) -> String {
    let names = NAMES.lock().expect("names");
    names.iter().find(|(t, _)| *t == tid).map(|(_, n)| n.clone()).unwrap_or_else(|| format!("tid {tid}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let millis: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let probe = register(
        Kprobe::symbol("libc:sched_yield")
            .pre(|_| {
                sample(false);
                PreAction::Continue
            })
            .post(|_| sample(true)),
    )?;
    let info = dprobe::inproc::list().into_iter().find(|p| p.id == probe.id()).expect("listed");
    println!(
        "Planted kprobe at {} ({}), executed {}",
        probe.addr(),
        info.symbol.as_deref().unwrap_or("?"),
        info.execution
    );

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let stop = stop.clone();
            std::thread::Builder::new().name(format!("worker-{n}")).spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u64;
                NAMES.lock().expect("names").push((tid, format!("worker-{n}")));
                let mut calls = 0u64;
                while !stop.load(Relaxed) {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                    calls += 1;
                }
                calls
            })
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(millis));
    stop.store(true, Relaxed);
    let made: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let elapsed = started.elapsed().as_millis();
    let hits = probe.hits();
    let keep: Vec<u64> = SAMPLE.iter().map(|s| s.load(Relaxed)).filter(|s| *s != 0).collect();
    let stats = probe.unregister()?;

    for s in keep {
        let (tid, cpu, after) = (s >> 32, (s >> 1) & 0xffff, s & 1 == 1);
        let when = if after { "after" } else { "before" };
        println!("current thread on CPU#{cpu}: {} ({when} scheduling)", thread_name(tid));
    }
    println!("Workers called sched_yield {made} times; the probe counted {hits} hits, {} missed.", stats.nmissed);
    println!("Scheduling times is {hits} during of {elapsed} milliseconds.");
    if hits != made {
        return Err(format!("hit count {hits} differs from the {made} calls made").into());
    }
    Ok(())
}
