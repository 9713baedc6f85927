//! Per-probe counters, updated on the hit path with relaxed atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Counters and the enabled flag of one probe. Shared between the handle the user holds and
/// the site the trap handler reads.
#[derive(Debug)]
pub struct ProbeStats {
    hits: AtomicU64,
    nmissed: AtomicU64,
    handler_panics: AtomicU64,
    handler_faults: AtomicU64,
    enabled: AtomicBool,
}

/// A copy of a probe's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Hits whose handlers ran.
    pub hits: u64,
    /// Hits that ran no handler because they happened inside a handler (kprobe rule 6).
    pub nmissed: u64,
    /// Handler calls that panicked (the probe is disabled after the first).
    pub handler_panics: u64,
    /// Handler calls that faulted (SIGSEGV/SIGBUS inside a handler).
    pub handler_faults: u64,
}

impl ProbeStats {
    /// Fresh counters; `enabled` as given.
    pub fn new(enabled: bool) -> Self {
        ProbeStats {
            hits: AtomicU64::new(0),
            nmissed: AtomicU64::new(0),
            handler_panics: AtomicU64::new(0),
            handler_faults: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
        }
    }

    /// Whether the probe's handlers run.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Enable or disable; returns the previous state.
    pub fn set_enabled(&self, on: bool) -> bool {
        self.enabled.swap(on, Relaxed)
    }

    /// Count a hit.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    /// Count a missed hit.
    pub fn miss(&self) {
        self.nmissed.fetch_add(1, Relaxed);
    }

    pub(crate) fn panicked(&self) {
        self.handler_panics.fetch_add(1, Relaxed);
        self.enabled.store(false, Relaxed);
    }

    /// Count a fault inside a handler.
    pub fn faulted(&self) {
        self.handler_faults.fetch_add(1, Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.load(Relaxed),
            nmissed: self.nmissed.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
            handler_faults: self.handler_faults.load(Relaxed),
        }
    }
}
