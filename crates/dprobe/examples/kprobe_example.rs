//! The article's first example, in user space: a kprobe on a scheduling point.
//!
//! The kernel module probed `schedule()` and printed, from its pre- and post-handlers, which
//! task was on which CPU. Here worker threads call libc's `sched_yield`, which dprobe probes
//! in this very process. Handlers run in signal context and must not print: they emit
//! records into a lock-free event ring, and the main thread prints them.
//!
//! Run: `cargo run --release --example kprobe_example [MILLISECONDS]`

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{register_thread_name, thread_name};
use dprobe::inproc::{emit, register, EventRing, Kprobe, PreAction, ProbeId, RingRecord};

const WORKERS: usize = 4;
const BEFORE: u32 = 0;
const AFTER: u32 = 1;
/// Lines printed; the rest are counted.
const SHOWN: usize = 8;

static RING: OnceLock<EventRing> = OnceLock::new();
static PROBE: OnceLock<ProbeId> = OnceLock::new();

fn record(kind: u32) {
    if let (Some(ring), Some(id)) = (RING.get(), PROBE.get()) {
        emit(ring, *id, kind, &mut RingRecord::default());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let millis: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let ring = RING.get_or_init(|| EventRing::new(4096));
    let probe = register(
        Kprobe::symbol("libc:sched_yield")
            .pre(|_| {
                record(BEFORE);
                PreAction::Continue
            })
            .post(|_| record(AFTER)),
    )?;
    PROBE.set(probe.id()).expect("set once");
    let info = dprobe::inproc::list().into_iter().find(|p| p.id == probe.id()).expect("listed");
    println!(
        "Planted kprobe at {} ({}), executed {}, {}",
        probe.addr(),
        info.symbol.as_deref().unwrap_or("?"),
        info.execution,
        match probe.optimized() {
            Ok(()) => "jump-optimized".to_owned(),
            Err(why) => format!("not jump-optimized: {why}"),
        }
    );

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let stop = stop.clone();
            std::thread::Builder::new().name(format!("worker-{n}")).spawn(move || {
                register_thread_name(&format!("worker-{n}"));
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

    let (mut shown, mut drained) = (0usize, 0u64);
    let mut event = RingRecord::default();
    let mut drain = |shown: &mut usize, drained: &mut u64| {
        while ring.pop_into(&mut event) {
            *drained += 1;
            if *shown < SHOWN {
                *shown += 1;
                let when = if event.kind == BEFORE { "before" } else { "after" };
                println!("current thread on CPU#{}: {} ({when} scheduling)", event.cpu, thread_name(event.tid));
            }
        }
    };
    while started.elapsed() < Duration::from_millis(millis) {
        drain(&mut shown, &mut drained);
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Relaxed);
    let made: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let elapsed = started.elapsed().as_millis();
    drain(&mut shown, &mut drained);
    let stats = probe.unregister()?;
    println!(
        "... {} more events not printed; {} dropped because the ring was full",
        drained - shown as u64,
        ring.dropped()
    );
    println!(
        "Workers called sched_yield {made} times; the probe counted {} hits, {} missed.",
        stats.hits, stats.reentered
    );
    println!("Scheduling times is {} during of {elapsed} milliseconds.", stats.hits);
    if stats.hits != made {
        return Err(format!("hit count {} differs from the {made} calls made", stats.hits).into());
    }
    Ok(())
}
