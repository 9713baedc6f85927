//! The article's third example, in user space: a return probe on the C library's `openat`
//! with `maxactive = 1`, so that concurrent calls find no free instance and are missed.
//!
//! Run: `cargo run --release --example kretprobe_example`

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use common::errno_name;
use dprobe::inproc::{emit, register_kretprobe, EventRing, Kretprobe, RingRecord};

static RING: OnceLock<EventRing> = OnceLock::new();
static CALLS: AtomicU64 = AtomicU64::new(0);

const THREADS: usize = 4;
const OPENS_PER_THREAD: usize = 2000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ring = RING.get_or_init(|| EventRing::new(1 << 14));
    let probe = register_kretprobe(Kretprobe::symbol("libc:openat").maxactive(1).handler(|regs, _| {
        let ret = regs.rax as i32;
        if ret < 0 {
            // The C library returns -1 and leaves the error in this thread's errno.
            // SAFETY: __errno_location returns this thread's errno; reading it is
            // async-signal-safe.
            let errno = unsafe { *libc::__errno_location() };
            let mut event = RingRecord::default();
            event.values[0] = ret as i64 as u64;
            event.values[1] = errno as u64;
            if let Some(ring) = RING.get() {
                emit(ring, dprobe::ProbeId(0), 0, &mut event);
            }
        }
    }))?;
    let maxactive = probe.maxactive().map_or_else(|| "no limit".to_string(), |n| n.to_string());
    println!("Planted return probe at {} with maxactive = {maxactive}", probe.addr());

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let paths = [c"/etc/hostname", c"/no/such/file", c"/etc/passwd", c"/etc/nothing-here"];
                for i in 0..OPENS_PER_THREAD {
                    let path = paths[(i + t) % paths.len()];
                    CALLS.fetch_add(1, Relaxed);
                    // SAFETY: valid C strings; descriptors are closed right away.
                    unsafe {
                        let fd = libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                        if fd >= 0 {
                            libc::close(fd);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    let stats = probe.unregister()?;
    let mut shown = 0;
    while let Some(e) = ring.pop() {
        if shown < 5 {
            let errno = e.values[1] as i32;
            println!("openat returns {} ({}, errno {errno})", e.values[0] as i64, errno_name(errno));
        }
        shown += 1;
    }
    if shown > 5 {
        println!("... and {} more failed opens", shown - 5);
    }
    let calls = CALLS.load(Relaxed);
    let missed = stats.missed + stats.reentered;
    println!("{calls} calls: {} traced returns + {missed} missed = {}", stats.returns, stats.returns + missed);
    println!("Missed {missed} openat probe instances.");
    if stats.returns + missed != calls {
        return Err("traced + missed does not add up to the calls made".into());
    }
    Ok(())
}
