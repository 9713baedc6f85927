//! A lock-free multi-producer ring of fixed-size event records: how handlers, which run in
//! signal context and must not lock, allocate or block, get data out to a normal thread.
//!
//! The queue is Dmitry Vyukov's bounded MPMC array queue: each slot carries a sequence number
//! that says whether it is free for the producer of a given position or full for the consumer
//! of that position; producers claim positions with a compare-and-swap on the tail. A full
//! ring drops the record and counts it, so a probed thread never waits. Records are stored in
//! atomics word by word, so the ring needs no `unsafe`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

/// Bytes of variable payload a record can carry (a path, a buffer's head).
pub const PAYLOAD_BYTES: usize = 256;
/// Numeric values a record can carry.
pub const VALUES: usize = 8;

const HEADER_WORDS: usize = 4;
const PAYLOAD_WORDS: usize = PAYLOAD_BYTES / 8;
const WORDS: usize = HEADER_WORDS + VALUES + PAYLOAD_WORDS;

/// One event, as a handler writes it and the consumer reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    /// What kind of event (the producer's own numbering).
    pub kind: u32,
    /// The thread it happened on.
    pub tid: u32,
    /// The CPU it happened on.
    pub cpu: u32,
    /// Monotonic time in nanoseconds.
    pub time_ns: u64,
    /// Which probe.
    pub probe: u64,
    /// Numeric values.
    pub values: [u64; VALUES],
    payload_len: usize,
    payload: [u8; PAYLOAD_BYTES],
}

impl Default for Event {
    fn default() -> Self {
        Event {
            kind: 0,
            tid: 0,
            cpu: 0,
            time_ns: 0,
            probe: 0,
            values: [0; VALUES],
            payload_len: 0,
            payload: [0; PAYLOAD_BYTES],
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind)
            .field("tid", &self.tid)
            .field("cpu", &self.cpu)
            .field("time_ns", &self.time_ns)
            .field("probe", &self.probe)
            .field("values", &self.values)
            .field("payload", &String::from_utf8_lossy(self.payload()))
            .finish()
    }
}

impl Event {
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.payload_len]
    }

    /// Set the payload (truncated to [`PAYLOAD_BYTES`]); returns how much was kept.
    pub fn set_payload(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(PAYLOAD_BYTES);
        self.payload[..n].copy_from_slice(&bytes[..n]);
        self.payload_len = n;
        n
    }
}

struct Slot {
    sequence: AtomicUsize,
    words: [AtomicU64; WORDS],
}

/// The ring. Producers: any thread or signal handler. Consumers: any thread (usually one).
pub struct EventRing {
    slots: Box<[Slot]>,
    mask: usize,
    head: AtomicUsize,
    tail: AtomicUsize,
    dropped: AtomicU64,
}

impl EventRing {
    /// A ring of `capacity` records (rounded up to a power of two, at least 2). Allocates all
    /// its memory now.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|i| Slot { sequence: AtomicUsize::new(i), words: std::array::from_fn(|_| AtomicU64::new(0)) })
            .collect();
        EventRing {
            slots,
            mask: cap - 1,
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Number of records it holds.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Records dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Append `event`; when the ring is full the record is dropped and counted, and `false`
    /// returned. Lock-free and async-signal-safe: never blocks, never allocates.
    pub fn push(&self, event: &Event) -> bool {
        let mut pos = self.tail.load(Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.sequence.load(Acquire);
            let diff = seq as isize - pos as isize;
            if diff == 0 {
                match self.tail.compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                self.dropped.fetch_add(1, Relaxed);
                return false;
            } else {
                pos = self.tail.load(Relaxed);
            }
        };
        let w = &slot.words;
        w[0].store(u64::from(event.kind) | u64::from(event.tid) << 32, Relaxed);
        w[1].store(u64::from(event.cpu) | (event.payload_len as u64) << 32, Relaxed);
        w[2].store(event.time_ns, Relaxed);
        w[3].store(event.probe, Relaxed);
        for (dst, v) in w[HEADER_WORDS..].iter().zip(event.values) {
            dst.store(v, Relaxed);
        }
        let payload_words = event.payload_len.div_ceil(8);
        for (i, chunk) in event.payload[..payload_words * 8].chunks_exact(8).enumerate() {
            w[HEADER_WORDS + VALUES + i].store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Relaxed);
        }
        slot.sequence.store(pos + 1, Release);
        true
    }

    /// Take the oldest record into `out`; `false` when the ring is empty. Allocates nothing.
    pub fn pop_into(&self, out: &mut Event) -> bool {
        let mut pos = self.head.load(Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.sequence.load(Acquire);
            let diff = seq as isize - (pos + 1) as isize;
            if diff == 0 {
                match self.head.compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return false;
            } else {
                pos = self.head.load(Relaxed);
            }
        };
        let w = &slot.words;
        let (w0, w1) = (w[0].load(Relaxed), w[1].load(Relaxed));
        out.kind = w0 as u32;
        out.tid = (w0 >> 32) as u32;
        out.cpu = w1 as u32;
        out.payload_len = ((w1 >> 32) as usize).min(PAYLOAD_BYTES);
        out.time_ns = w[2].load(Relaxed);
        out.probe = w[3].load(Relaxed);
        for (v, src) in out.values.iter_mut().zip(&w[HEADER_WORDS..]) {
            *v = src.load(Relaxed);
        }
        for i in 0..out.payload_len.div_ceil(8) {
            let bytes = w[HEADER_WORDS + VALUES + i].load(Relaxed).to_le_bytes();
            out.payload[i * 8..i * 8 + 8].copy_from_slice(&bytes);
        }
        slot.sequence.store(pos + self.mask + 1, Release);
        true
    }

    /// Take the oldest record.
    pub fn pop(&self) -> Option<Event> {
        let mut e = Event::default();
        self.pop_into(&mut e).then_some(e)
    }
}
