//! Emitting events from handlers into an [`EventRing`].

use dprobe_core::{EventRing, ProbeId, RingRecord};

/// Fill in the thread, CPU and time of `event` and push it into `ring`; `false` when the
/// ring was full (the record is dropped and counted). Async-signal-safe: `gettid`,
/// `sched_getcpu` and `clock_gettime` are, and the ring never blocks.
pub fn emit(ring: &EventRing, probe: ProbeId, kind: u32, event: &mut RingRecord) -> bool {
    // SAFETY: gettid and sched_getcpu take no arguments; clock_gettime writes the timespec
    // we own.
    let (tid, cpu, ts) = unsafe {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        (libc::gettid(), libc::sched_getcpu(), ts)
    };
    event.kind = kind;
    event.probe = probe.0;
    event.tid = tid as u32;
    event.cpu = cpu.max(0) as u32;
    event.time_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ring.push(event)
}
