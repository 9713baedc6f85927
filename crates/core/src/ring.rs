//! A lock-free multi-producer ring of fixed-size event records: how handlers, which run in
//! signal context and must not lock, allocate or block, get data out to a normal thread.
//!
//! The queue is Dmitry Vyukov's bounded MPMC array queue: each slot carries a sequence number
//! that says whether it is free for the producer of a given position or full for the consumer
//! of that position; producers claim positions with a compare-and-swap on the tail. A full
//! ring drops the record and counts it, so a probed thread never waits.
//!
//! The protocol ([`claim`], [`publish`], [`take`], [`release`]) is written once over
//! [`RingCells`], wherever the positions and slots are: [`EventRing`] keeps them in this
//! process's heap, its records stored in atomics word by word (so it needs no `unsafe`); the
//! in-process agent keeps them in memory it shares with the tracer.

use std::sync::atomic::{AtomicU64, Ordering::*};

/// Where a ring keeps its positions and its slots' sequence numbers.
///
/// Slot `i`'s word holds its sequence number less `i` (wrapping): a slot's sequence number
/// starts at `i`, so every word starts at 0, and a ring in memory that is all zeros (a new
/// shared memory file) is ready as it is, without a write to each of its pages.
pub trait RingCells {
    /// How many slots it has: a power of two.
    fn capacity(&self) -> usize;
    /// Slot `i`'s sequence word (its sequence number less `i`).
    fn sequence(&self, i: usize) -> &AtomicU64;
    /// The next position to write.
    fn tail(&self) -> &AtomicU64;
    /// The next position to read.
    fn head(&self) -> &AtomicU64;
    /// Records dropped because the ring was full.
    fn dropped(&self) -> &AtomicU64;
}

/// A slot claimed to write ([`claim`]) or to read ([`take`]); the caller owns it until it
/// hands it back with [`publish`] or [`release`].
#[derive(Debug)]
#[must_use = "a claimed slot blocks the ring until it is handed back"]
pub struct Claimed {
    /// The slot's index.
    pub slot: usize,
    pos: u64,
}

/// Claim the next slot to write; `None` (the record dropped and counted) when the ring is
/// full. Lock-free and async-signal-safe.
pub fn claim(ring: &(impl RingCells + ?Sized)) -> Option<Claimed> {
    let mask = ring.capacity() as u64 - 1;
    let mut pos = ring.tail().load(Relaxed);
    loop {
        let slot = (pos & mask) as usize;
        let diff = sequence_of(ring, slot) as i64 - pos as i64;
        if diff == 0 {
            match ring.tail().compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                Ok(_) => return Some(Claimed { slot, pos }),
                Err(now) => pos = now,
            }
        } else if diff < 0 {
            ring.dropped().fetch_add(1, Relaxed);
            return None;
        } else {
            pos = ring.tail().load(Relaxed);
        }
    }
}

/// Hand a written slot to the consumer.
pub fn publish(ring: &(impl RingCells + ?Sized), c: Claimed) {
    set_sequence(ring, c.slot, c.pos + 1);
}

/// Claim the oldest written slot to read; `None` when the ring is empty.
pub fn take(ring: &(impl RingCells + ?Sized)) -> Option<Claimed> {
    let mask = ring.capacity() as u64 - 1;
    let mut pos = ring.head().load(Relaxed);
    loop {
        let slot = (pos & mask) as usize;
        let diff = sequence_of(ring, slot) as i64 - (pos + 1) as i64;
        if diff == 0 {
            match ring.head().compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                Ok(_) => return Some(Claimed { slot, pos }),
                Err(now) => pos = now,
            }
        } else if diff < 0 {
            return None;
        } else {
            pos = ring.head().load(Relaxed);
        }
    }
}

/// Give a read slot back to the producers.
pub fn release(ring: &(impl RingCells + ?Sized), c: Claimed) {
    set_sequence(ring, c.slot, c.pos + ring.capacity() as u64);
}

/// Slot `slot`'s sequence number.
fn sequence_of(ring: &(impl RingCells + ?Sized), slot: usize) -> u64 {
    ring.sequence(slot).load(Acquire).wrapping_add(slot as u64)
}

/// Set slot `slot`'s sequence number, for the other side.
fn set_sequence(ring: &(impl RingCells + ?Sized), slot: usize, sequence: u64) {
    ring.sequence(slot).store(sequence.wrapping_sub(slot as u64), Release);
}

/// Bytes of variable payload a record can carry (a path, a buffer's head).
pub const PAYLOAD_BYTES: usize = 256;
/// Numeric values a record can carry.
pub const VALUES: usize = 8;

const HEADER_WORDS: usize = 4;
const PAYLOAD_WORDS: usize = PAYLOAD_BYTES / 8;
const WORDS: usize = HEADER_WORDS + VALUES + PAYLOAD_WORDS;

/// One record of the ring, as a handler writes it and the consumer reads it (the in-process
/// API's raw record; what engines deliver to sinks is a [`crate::ProbeEvent`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RingRecord {
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

impl Default for RingRecord {
    fn default() -> Self {
        RingRecord {
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

impl std::fmt::Debug for RingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingRecord")
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

impl RingRecord {
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
    sequence: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// The ring. Producers: any thread or signal handler. Consumers: any thread (usually one).
pub struct EventRing {
    slots: Box<[Slot]>,
    head: AtomicU64,
    tail: AtomicU64,
    dropped: AtomicU64,
}

impl RingCells for EventRing {
    fn capacity(&self) -> usize {
        self.slots.len()
    }
    fn sequence(&self, i: usize) -> &AtomicU64 {
        &self.slots[i].sequence
    }
    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }
    fn head(&self) -> &AtomicU64 {
        &self.head
    }
    fn dropped(&self) -> &AtomicU64 {
        &self.dropped
    }
}

impl EventRing {
    /// A ring of `capacity` records (rounded up to a power of two, at least 2). Allocates all
    /// its memory now.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|_| Slot { sequence: AtomicU64::new(0), words: std::array::from_fn(|_| AtomicU64::new(0)) })
            .collect();
        EventRing { slots, head: AtomicU64::new(0), tail: AtomicU64::new(0), dropped: AtomicU64::new(0) }
    }

    /// Number of records it holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Append `event`; when the ring is full the record is dropped and counted, and `false`
    /// returned. Lock-free and async-signal-safe: never blocks, never allocates.
    pub fn push(&self, event: &RingRecord) -> bool {
        let Some(c) = claim(self) else { return false };
        let slot = &self.slots[c.slot];
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
        publish(self, c);
        true
    }

    /// Take the oldest record into `out`; `false` when the ring is empty. Allocates nothing.
    pub fn pop_into(&self, out: &mut RingRecord) -> bool {
        let Some(c) = take(self) else { return false };
        let slot = &self.slots[c.slot];
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
        release(self, c);
        true
    }

    /// Take the oldest record.
    pub fn pop(&self) -> Option<RingRecord> {
        let mut e = RingRecord::default();
        self.pop_into(&mut e).then_some(e)
    }
}
