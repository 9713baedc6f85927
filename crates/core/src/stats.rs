//! Per-probe counters: the in-process engine's, updated on the hit path with relaxed atomics,
//! and [`Stats`], what every engine reports at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use dprobe_arch::Addr;

use crate::HitCount;

/// Counters and the enabled flag of one probe. Shared between the handle the user holds and
/// the site the trap handler reads.
#[derive(Debug)]
pub struct ProbeCounters {
    hits: HitCount,
    nmissed: AtomicU64,
    handler_panics: AtomicU64,
    handler_faults: AtomicU64,
    rearmed: AtomicU64,
    enabled: AtomicBool,
}

impl ProbeCounters {
    /// Fresh counters; `enabled` as given.
    pub fn new(enabled: bool) -> Self {
        ProbeCounters {
            hits: HitCount::default(),
            nmissed: AtomicU64::new(0),
            handler_panics: AtomicU64::new(0),
            handler_faults: AtomicU64::new(0),
            rearmed: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
        }
    }

    /// Whether the probe's handlers run.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Enable or disable; returns the previous state.
    pub fn set_enabled(&self, on: bool) -> bool {
        self.enabled.swap(on, Relaxed)
    }

    /// Count a hit of `thread` ([`HitCount::add_by`]): without a locked instruction, nor a
    /// cache line another thread writes, for the first threads that count.
    #[inline]
    pub fn hit_by(&self, thread: u64) {
        self.hits.add_by(thread);
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

    /// Count the probe's breakpoint found gone and put back ([`Stats::rearmed`]).
    pub fn rearmed(&self) {
        self.rearmed.fetch_add(1, Relaxed);
    }

    /// Current values, as every engine reports them (`nmissed` is [`Stats::reentered`]).
    pub fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.get(),
            reentered: self.nmissed.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
            handler_faults: self.handler_faults.load(Relaxed),
            rearmed: self.rearmed.load(Relaxed),
            ..Stats::default()
        }
    }
}

/// What became of a probe's hits, the same for every engine: the figures a trace's summary
/// shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Times the probed place was reached (for the kernel engine, also those its filter
    /// dropped).
    pub hits: u64,
    /// Returns seen (return probes, and entries timed to their returns).
    pub returns: u64,
    /// Entries whose return could not be watched: `maxactive` returns were already pending
    /// (the kernel's kretprobe `nmissed`).
    pub missed: u64,
    /// Hits that ran no handler because they came while a handler ran (the kernel's kprobe
    /// `nmissed`).
    pub reentered: u64,
    /// Pending returns the program abandoned (`longjmp`, exceptions), or lost with a thread
    /// that exited or a program image that was replaced.
    pub abandoned: u64,
    /// Hits that happened but never reached the tracer as events (full buffers, or they came
    /// as tracing stopped).
    pub lost: u64,
    /// Handler calls that panicked (in-process: the probe is disabled after the first).
    pub handler_panics: u64,
    /// Handler calls that faulted (in-process: `SIGSEGV`/`SIGBUS` inside a handler).
    pub handler_faults: u64,
    /// Times the probe's breakpoint was found gone and put back (another tool's uprobe on
    /// the same instruction was removed, which writes the original instruction back, or the
    /// program rewrote its code): hits in between were not seen.
    pub rearmed: u64,
    /// Where the probe is.
    pub placement: Placement,
}

/// Whether and where a probe is placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Placement {
    /// At this address of the traced process.
    At(Addr),
    /// Placed by the kernel, which keeps the address (a dynamic event, a tracepoint).
    InKernel,
    /// Waiting for its library to be loaded.
    #[default]
    Waiting,
    /// It waited for its library, which came, but the probe could not be placed there.
    Failed(String),
    /// It was placed in its library each time that was loaded; the library has been unloaded
    /// since (`dlclose`), and the probe waits for it to be loaded again.
    Unloaded,
}

impl Stats {
    /// The address, when the probe is placed at one.
    pub fn addr(&self) -> Option<Addr> {
        match self.placement {
            Placement::At(a) => Some(a),
            _ => None,
        }
    }
}
