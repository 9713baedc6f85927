//! Every return address replaced by the trampoline, by the address of its slot, for the
//! process: a return that comes back through the trampoline on another thread than the one
//! whose entry replaced it finds its address here.
//!
//! A stackful coroutine (`swapcontext`, a fiber library with work stealing, a green thread) may
//! be suspended on one thread inside a function whose return address dprobe replaced, and
//! resumed on another. The function then returns through the trampoline on a thread whose
//! pending stack has no entry for it; without its address the program cannot go on (the
//! dispatcher aborted there). Its entry stays on the first thread's pending stack, where the
//! return rule drops it as stale once that thread finds its frame gone: the return is counted
//! as stale, its handler does not run (only the thread that took the instance may give it
//! back).
//!
//! A fixed table of slot address and return address, open addressing over a window of
//! buckets, atomics only: entered as the address is replaced (after the entry is pushed,
//! before the slot is written), left as the entry leaves its thread's pending stack (a return,
//! or a drop). No allocation and no lock: it is on the hit path. An address that finds no free
//! bucket in its window is not entered (a return of it on another thread aborts, as before):
//! the table holds the returns pending through return addresses in the whole process, 4,096
//! of them at the most.

use std::sync::atomic::{AtomicU64, Ordering::*};

const BUCKETS: usize = 4096;
/// Buckets looked at from an address's own (two cache lines).
const WINDOW: usize = 8;

struct Bucket {
    /// The slot's address; 0: free.
    slot: AtomicU64,
    /// The real return address.
    ret: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // the initializer of the array below
const FREE: Bucket = Bucket { slot: AtomicU64::new(0), ret: AtomicU64::new(0) };
static TABLE: [Bucket; BUCKETS] = [FREE; BUCKETS];

/// The buckets of slot `slot`'s window, its own first.
fn window(slot: u64) -> impl Iterator<Item = &'static Bucket> {
    // Slots are 8-byte aligned and neighbours on a stack: the multiplication spreads them.
    let home = (slot >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKETS.trailing_zeros());
    (0..WINDOW).map(move |k| &TABLE[(home as usize + k) % BUCKETS])
}

/// The return address `ret` in slot `slot` is being replaced by the trampoline's. The
/// trampoline's own address (a second entry on one slot, a tail call chaining to a pending
/// return) is not: the slot's first entry holds the real one.
pub(crate) fn replaced(slot: u64, ret: u64, trampoline: u64) {
    if slot == 0 || ret == trampoline {
        return;
    }
    // One live frame at a time has a slot at this address: a bucket of it is an earlier
    // frame's, whose entry left without a return (dropped by another rule than this table's).
    let mut free = None;
    for b in window(slot) {
        match b.slot.load(Acquire) {
            s if s == slot => {
                b.ret.store(ret, Release);
                return;
            }
            0 if free.is_none() => free = Some(b),
            _ => {}
        }
    }
    // Claimed first (another thread may claim the same bucket), then filled: a reader of the
    // slot comes only after the trampoline's address is written, after this.
    let claimed =
        free.into_iter().chain(window(slot)).find(|b| b.slot.compare_exchange(0, slot, AcqRel, Relaxed).is_ok());
    if let Some(b) = claimed {
        b.ret.store(ret, Release);
    }
}

/// The entry of slot `slot`, with real return address `ret`, left its thread's pending stack.
pub(crate) fn left(slot: u64, ret: u64) {
    if let Some(b) = window(slot).find(|b| b.slot.load(Acquire) == slot && b.ret.load(Acquire) == ret) {
        b.slot.store(0, Release);
    }
}

/// The real return address of slot `slot`, seen from a thread with no entry for it (an
/// unwinder walking a stack resumed there).
pub(crate) fn address_of(slot: u64) -> Option<u64> {
    let b = window(slot).find(|b| b.slot.load(Acquire) == slot)?;
    Some(b.ret.load(Acquire))
}

/// The real return address of slot `slot`, whose return came through the trampoline on a
/// thread with no entry for it; the bucket is freed (the frame has returned).
pub(crate) fn returned_elsewhere(slot: u64) -> Option<u64> {
    let b = window(slot).find(|b| b.slot.load(Acquire) == slot)?;
    let ret = b.ret.load(Acquire);
    b.slot.store(0, Release);
    Some(ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The table is the process's: each test uses slot addresses of its own.

    #[test]
    fn an_address_replaced_is_found_once_and_gone_after_it_left() {
        const T: u64 = 0x5000;
        replaced(0x7000_0000_1000, 0x40_1234, T);
        assert_eq!(address_of(0x7000_0000_1000), Some(0x40_1234));
        assert_eq!(returned_elsewhere(0x7000_0000_1000), Some(0x40_1234));
        assert_eq!(returned_elsewhere(0x7000_0000_1000), None, "freed by the return");
        replaced(0x7000_0000_2000, 0x40_5678, T);
        left(0x7000_0000_2000, 0x40_5678);
        assert_eq!(returned_elsewhere(0x7000_0000_2000), None);
    }

    #[test]
    fn a_chained_entry_keeps_the_first_address_and_leaves_it_to_the_first() {
        const T: u64 = 0x5000;
        replaced(0x7000_0001_1000, 0x40_1111, T);
        replaced(0x7000_0001_1000, T, T);
        left(0x7000_0001_1000, T);
        assert_eq!(returned_elsewhere(0x7000_0001_1000), Some(0x40_1111));
    }

    #[test]
    fn a_later_frame_at_the_same_slot_replaces_an_earlier_ones_address() {
        const T: u64 = 0x5000;
        replaced(0x7000_0002_1000, 0x40_2222, T);
        replaced(0x7000_0002_1000, 0x40_3333, T);
        assert_eq!(returned_elsewhere(0x7000_0002_1000), Some(0x40_3333));
    }

    #[test]
    fn neighbouring_slots_of_one_stack_each_have_their_own() {
        const T: u64 = 0x5000;
        let base = 0x7000_0003_0000u64;
        for i in 0..64 {
            replaced(base + 8 * i, 0x40_0000 + i, T);
        }
        for i in 0..64 {
            assert_eq!(returned_elsewhere(base + 8 * i), Some(0x40_0000 + i));
        }
    }
}
