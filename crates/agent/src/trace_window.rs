//! One moment at which every probe of a trace starts counting, and one at which all stop.
//!
//! The agent places a trace's probes one after another (a batch of entry probes, then each
//! return probe alone), each going live as it is placed, and removes them the same way. A
//! running program's calls meanwhile would be seen by some probes and not by others: with
//! `f` and `f%return` on a single thread's loop, the entry probe counted 9,000 calls more than
//! the return probe. So the calls a probe sees are those that begin while the window is open:
//! from the tracer's word that every probe is placed ([`crate::wire::Message::Arm`]) to the
//! start of the removal. A call that began inside it still has its return seen.
//!
//! The window gates the calls the agent's handlers count (hits, returns, events); the
//! in-process engine's own counts of hits it could not hand to a handler (missed, re-entered)
//! are not gated, and are few.
//!
//! A forked child that is traced counts from its start (`child.rs`); probes placed later (a
//! library loaded while the trace runs) count from their placing.

use std::sync::atomic::{AtomicBool, Ordering::*};

static OPEN: AtomicBool = AtomicBool::new(false);

/// Every probe is placed: calls count from now.
pub(crate) fn open() {
    OPEN.store(true, Release);
}

/// The removal begins: calls that begin from now are not counted.
pub(crate) fn close() {
    OPEN.store(false, Release);
}

/// Whether a call beginning now is counted (one load on the hit path).
#[inline]
pub(crate) fn is_open() -> bool {
    OPEN.load(Relaxed)
}
