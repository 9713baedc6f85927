//! A count that hit paths add to, without a locked instruction and without a cache line that
//! another thread writes, for the first few threads that count.
//!
//! A locked add on the hit path costs about 5 ns (measured on an Intel Xeon: it waits until
//! the stores of the jump stub's register frame have drained), a sixth of a jump-optimized
//! hit. Worse, a word that every thread adds to moves from core to core at each hit: two
//! threads hitting one probe on two cores paid about 100 ns a hit each instead of 25. The
//! kernel counts its kprobe events' `nhit` per CPU for both reasons. dprobe counts per owner
//! instead: a few stripes, each in a cache line of its own; the first thread to count in a
//! stripe owns it, and adds to its word with a load and a store. A thread finds its stripe
//! from its word's hash, or the next one free, through a directory of owners that only
//! claims write (read by every hit, it stays in every core's cache). Threads past the
//! stripes add to their hashed stripe's shared word with a locked add: they share that line
//! with its owner, as all threads shared one before.

use std::sync::atomic::{AtomicU64, Ordering::*};

/// Threads that count without a locked add or a shared cache line. Each stripe is a cache
/// line: a count takes `(STRIPES + 1) * 64` bytes.
const STRIPES: usize = 4;

/// A count added to by hit paths; see the module's comment.
///
/// Its layout is C's and all its bytes are zero when new, so that a count may also live in
/// zeroed memory another process maps (64-byte aligned): the agent keeps its probes' counts
/// in the memory it shares with dprobe.
#[derive(Debug, Default)]
#[repr(C)]
pub struct HitCount {
    owners: Owners,
    stripes: [Stripe; STRIPES],
}

/// Each stripe's owner (0: none yet), in a line that claims alone write.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Owners([AtomicU64; STRIPES]);

/// One stripe's words, in a line of their own.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Stripe {
    /// Added to by the stripe's owner alone, with a load and a store.
    owned: AtomicU64,
    /// Added to by other threads whose word hashes here, with a locked add.
    shared: AtomicU64,
}

/// The stripe a thread word's search starts at: the top bits of a Fibonacci hash, which all
/// of the word's bits reach (words are addresses of per-thread entries, whose low bits are
/// alike, or a process id and a small index, whose high bits are).
fn first_stripe(thread: u64) -> usize {
    (thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % STRIPES
}

impl HitCount {
    /// Add one for `thread`: a word no other live thread is given (an engine's per-thread
    /// state entry, or its thread pointer), or 0 for a caller that has none (then a shared
    /// word, always).
    ///
    /// Exact only if the adds of one thread to one count never nest: a signal handler's add
    /// between the owner's load and store would be lost. Engines guarantee it with the rule
    /// that a hit inside a handler, or inside the hit path, counts as missed, not here. And
    /// only if `thread` is the caller's alone: threads a program starts with a raw
    /// `clone(CLONE_VM)` and no thread pointer of their own share the in-process engine's
    /// state entry, and so its word (a limit of that engine's hit path already).
    #[inline]
    pub fn add_by(&self, thread: u64) {
        let first = first_stripe(thread);
        if thread != 0 {
            // Owners are never given back: a thread owns at most one stripe, the first of
            // its search that was free, and finds it again at the same place of the search.
            for k in 0..STRIPES {
                let i = (first + k) % STRIPES;
                let owner = &self.owners.0[i];
                let current = owner.load(Relaxed);
                if current == thread || current == 0 && owner.compare_exchange(0, thread, Relaxed, Relaxed).is_ok() {
                    let owned = &self.stripes[i].owned;
                    owned.store(owned.load(Relaxed) + 1, Release);
                    return;
                }
            }
        }
        self.stripes[first].shared.fetch_add(1, Release);
    }

    /// Add one for a caller with no thread word (a shared word).
    #[inline]
    pub fn add(&self) {
        self.add_by(0);
    }

    /// The count. Each word is added to with release ordering and read with acquire ordering,
    /// so that a count read before another is read before it whole: a reader that reads the
    /// returns, then the entries, never sees more returns than entries, whichever word each
    /// was added to. (On x86-64 both are plain moves and the locked add it had.)
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.shared.load(Acquire) + s.owned.load(Acquire)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread words as an engine gives them: addresses of its per-thread entries.
    fn words(n: u64) -> impl Iterator<Item = u64> {
        (1..=n).map(|t| 0x7f00_0000_0000 + t * 0x3840)
    }

    #[test]
    fn the_owners_adds_and_the_others_add_up_exactly() {
        let count = HitCount::default();
        std::thread::scope(|s| {
            for thread in words(6) {
                let count = &count;
                s.spawn(move || (0..100_000).for_each(|_| count.add_by(thread)));
            }
            s.spawn(|| (0..100_000).for_each(|_| count.add()));
            s.spawn(|| (0..100_000).for_each(|_| count.add_by(0)));
        });
        assert_eq!(count.get(), 800_000);
        // Every stripe has an owner, each a different thread, each with its own threads' adds.
        let owners: Vec<u64> = count.owners.0.iter().map(|o| o.load(Relaxed)).collect();
        let mut distinct = owners.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), STRIPES, "owners {owners:x?}");
        assert!(owners.iter().all(|o| words(6).any(|w| w == *o)), "owners {owners:x?}");
        assert!(count.stripes.iter().all(|s| s.owned.load(Relaxed) == 100_000));
    }

    #[test]
    fn as_many_threads_as_stripes_each_own_one_whatever_their_hashes() {
        // Words that all start their search at the same stripe.
        let alike: Vec<u64> = (1..).filter(|&w| first_stripe(w) == 0).take(STRIPES).collect();
        let count = HitCount::default();
        for round in 1..=3 {
            for &w in &alike {
                count.add_by(w);
            }
            assert!(count.stripes.iter().all(|s| s.owned.load(Relaxed) == round && s.shared.load(Relaxed) == 0));
        }
        assert_eq!(count.get(), 3 * STRIPES as u64);
    }

    #[test]
    fn each_stripe_and_the_owners_have_a_cache_line_of_their_own() {
        let count = HitCount::default();
        let line = |p: *const AtomicU64| p as usize / 64;
        let mut lines: Vec<usize> = count.stripes.iter().map(|s| line(&s.owned)).collect();
        lines.push(line(&count.owners.0[0]));
        assert!(count.owners.0.iter().all(|o| line(o) == line(&count.owners.0[0])));
        assert!(count.stripes.iter().all(|s| line(&s.shared) == line(&s.owned)));
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), STRIPES + 1);
    }

    #[test]
    fn the_first_stripes_of_keys_and_of_entry_addresses_spread() {
        // Process id << 32 | entry index + 1 (`count_key`), and entry addresses.
        let keys = (1..=64u64).map(|i| 4242 << 32 | i);
        let addresses = (0..64u64).map(|i| 0x7f12_3450_0000 + i * 0x3840);
        for words in [keys.collect::<Vec<_>>(), addresses.collect()] {
            let mut seen = [0; STRIPES];
            words.iter().for_each(|&w| seen[first_stripe(w)] += 1);
            assert!(seen.iter().all(|&n| n >= 8), "64 words over the stripes: {seen:?}");
        }
    }
}
