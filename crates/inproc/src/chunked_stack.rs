//! A thread's stack of pending calls with no fixed limit on its depth: its returns pending
//! through hijacked return addresses (`kretprobe.rs`), and its calls of functions watched at
//! their exits (`exits.rs`).
//!
//! The first `INLINE` entries live in the thread's own table entry (`thread_state.rs`).
//! Deeper ones live in chunks mapped when the thread first goes that deep, each twice the size
//! of the one before, so that 200,000 pending calls take ten mappings; the mapping is a system
//! call (see `mapped.rs`), so the hit path still allocates nothing from the heap and takes no
//! lock. A chunk that cannot be mapped (`ENOMEM`, an address-space limit) leaves the call
//! without room: it is missed and counted, as when a `maxactive` limit is reached.
//!
//! Chunks are kept while the thread may soon need them again: the chunk that holds the next
//! free entry and the one after it. When the thread comes back up past them (its calls return,
//! or a `longjmp` or an exception abandons them), the chunks above are unmapped; the rest go
//! when the thread exits.
//!
//! Only the owning thread and the signal handlers nested in it use a stack. A nested handler
//! runs to its end before the code it interrupted goes on, and pops what it pushed. Chunks are
//! published and withdrawn with single atomic instructions, and the entries below the depth
//! are never unmapped, so that interrupted code finds its entries where it left them.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};

use crate::mapped;

/// Chunk `k` (from 1) holds `INLINE << (k - 1)` entries: with 36 of them, more than any
/// address space can hold.
const CHUNKS: usize = 36;

/// Chunks mapped by every thread's stacks, for [`mapped_chunks`].
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// An entry of a [`ChunkedStack`]: all zeroes is a valid (unused) entry. Implemented by
/// [`stack_entry!`].
pub(crate) trait StackEntry {
    /// Take `other`'s values.
    fn copy_from(&self, other: &Self);
}

/// A field of a [`StackEntry`]: a `Cell` of plain data, or an array of them.
pub(crate) trait EntryField {
    /// Take `other`'s value.
    fn copy_from(&self, other: &Self);
}

impl<T: Copy> EntryField for Cell<T> {
    fn copy_from(&self, other: &Self) {
        self.set(other.get());
    }
}

impl<F: EntryField, const N: usize> EntryField for [F; N] {
    fn copy_from(&self, other: &Self) {
        for (to, from) in self.iter().zip(other) {
            to.copy_from(from);
        }
    }
}

/// `stack_entry!(Pending { sp, ret })`: `Pending` is a [`StackEntry`] that copies every one
/// of these fields. The list must name them all: the pattern it is matched against has no
/// `..`, so a field added to the struct and not here does not compile.
macro_rules! stack_entry {
    ($entry:ident { $($field:ident),+ $(,)? }) => {
        impl $crate::chunked_stack::StackEntry for $entry {
            fn copy_from(&self, other: &Self) {
                let $entry { $($field),+ } = self;
                $($crate::chunked_stack::EntryField::copy_from($field, &other.$field);)+
            }
        }
    };
}
pub(crate) use stack_entry;

/// A thread's pending calls, oldest first, `INLINE` of them held inline. All zeroes is empty.
pub(crate) struct ChunkedStack<T, const INLINE: usize> {
    depth: Cell<usize>,
    inline: [T; INLINE],
    /// Chunk `k + 1`, or null while it is not mapped.
    chunks: [AtomicPtr<T>; CHUNKS],
}

impl<T: StackEntry, const INLINE: usize> ChunkedStack<T, INLINE> {
    /// The chunk holding entry `i` (0: the inline entries), and `i`'s place in it.
    fn place(i: usize) -> (usize, usize) {
        if i < INLINE {
            return (0, i);
        }
        let k = (i / INLINE).ilog2() as usize + 1;
        (k, i - Self::first_of(k))
    }

    /// The first entry of chunk `k` (from 1), which is also its size.
    fn first_of(k: usize) -> usize {
        INLINE << (k - 1)
    }

    fn chunk_bytes(k: usize) -> usize {
        Self::first_of(k) * std::mem::size_of::<T>()
    }

    /// How many calls are pending.
    pub(crate) fn depth(&self) -> usize {
        self.depth.get()
    }

    /// Entry `i`, below the depth.
    pub(crate) fn get(&self, i: usize) -> &T {
        debug_assert!(i < self.depth.get());
        self.entry(i).expect("entries below the depth are mapped")
    }

    /// Entry `i` if its chunk is mapped.
    fn entry(&self, i: usize) -> Option<&T> {
        let (k, at) = Self::place(i);
        if k == 0 {
            return Some(&self.inline[at]);
        }
        let chunk = NonNull::new(self.chunks.get(k - 1)?.load(Acquire))?;
        // SAFETY: chunk k holds `first_of(k)` entries, `at` is below that; zeroed memory is a
        // valid entry; it stays mapped while this thread (the only user) holds entries in it or
        // just below it.
        Some(unsafe { &*chunk.as_ptr().add(at) })
    }

    /// The entry above the pending ones, to fill before [`ChunkedStack::commit`]; `None` when
    /// there is no room for it.
    pub(crate) fn next_free(&self) -> Option<&T> {
        let d = self.depth.get();
        self.entry(d).or_else(|| self.map_chunk(Self::place(d).0))
    }

    /// The entry [`ChunkedStack::next_free`] gave is filled: it is pending now.
    pub(crate) fn commit(&self) {
        self.depth.set(self.depth.get() + 1);
    }

    /// Whether there is room for one more entry (mapping a chunk if need be).
    pub(crate) fn room(&self) -> bool {
        self.next_free().is_some()
    }

    /// Push an entry filled by `fill`; `false` (nothing pushed) when there is no room for it.
    pub(crate) fn push(&self, fill: impl FnOnce(&T)) -> bool {
        let Some(e) = self.next_free() else { return false };
        fill(e);
        self.commit();
        true
    }

    /// Map chunk `k` (from 1) and return its first entry.
    #[cold]
    fn map_chunk(&self, k: usize) -> Option<&T> {
        let slot = self.chunks.get(k - 1)?;
        let fresh = mapped::map_zeroed(Self::chunk_bytes(k))?.cast::<T>();
        // A signal handler nested in this call may have mapped it meanwhile: keep theirs.
        match slot.compare_exchange(std::ptr::null_mut(), fresh.as_ptr(), AcqRel, Acquire) {
            Ok(_) => {
                MAPPED.fetch_add(1, Relaxed);
            }
            // SAFETY: ours, never published.
            Err(_) => unsafe { mapped::unmap(fresh.cast(), Self::chunk_bytes(k)) },
        }
        self.entry(Self::first_of(k))
    }

    /// Remove entry `i`, the ones above it moving down; unmap the chunks the thread left
    /// far behind.
    pub(crate) fn remove_at(&self, i: usize) {
        let d = self.depth.get();
        for j in i..d - 1 {
            self.get(j).copy_from(self.get(j + 1));
        }
        self.depth.set(d - 1);
        // Chunks are mapped in order and unmapped from the top: none above `keep + 1`
        // unless that one is.
        let keep = Self::place(d - 1).0 + 1;
        if self.chunks.get(keep).is_some_and(|c| !c.load(Relaxed).is_null()) {
            self.unmap_above(keep);
        }
    }

    /// Unmap every chunk above chunk `keep`.
    fn unmap_above(&self, keep: usize) {
        for k in (keep + 1..=CHUNKS).rev() {
            let p = self.chunks[k - 1].swap(std::ptr::null_mut(), AcqRel);
            if let Some(p) = NonNull::new(p) {
                MAPPED.fetch_sub(1, Relaxed);
                // SAFETY: chunk k, just withdrawn; it holds no entry below the depth (k is
                // above the chunk of the next free entry).
                unsafe { mapped::unmap(p.cast(), Self::chunk_bytes(k)) };
            }
        }
    }

    /// The thread is gone (its entries are dropped already): empty, every chunk unmapped.
    pub(crate) fn unmap_all(&self) {
        self.depth.set(0);
        self.unmap_above(0);
    }

    /// How many chunks this stack has mapped.
    pub(crate) fn chunks(&self) -> usize {
        self.chunks.iter().filter(|c| !c.load(Relaxed).is_null()).count()
    }
}

/// How many chunks every thread's stacks have mapped together.
pub(crate) fn mapped_chunks() -> usize {
    MAPPED.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: usize = 256;

    #[derive(Default)]
    struct Entry {
        sp: Cell<u64>,
        ret: Cell<u64>,
    }

    stack_entry!(Entry { sp, ret });

    type Stack = ChunkedStack<Entry, INLINE>;

    fn place(i: usize) -> (usize, usize) {
        Stack::place(i)
    }

    fn first_of(k: usize) -> usize {
        Stack::first_of(k)
    }

    fn empty() -> Box<Stack> {
        // SAFETY: all zeroes is an empty stack (Cells of integers, null pointers).
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn entries_are_placed_in_chunks_that_double() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(INLINE - 1), (0, INLINE - 1));
        assert_eq!(place(INLINE), (1, 0));
        assert_eq!(place(2 * INLINE - 1), (1, INLINE - 1));
        assert_eq!(place(2 * INLINE), (2, 0));
        assert_eq!(place(4 * INLINE - 1), (2, 2 * INLINE - 1));
        assert_eq!(place(4 * INLINE), (3, 0));
        // Every chunk ends where the next begins.
        for k in 1..20 {
            assert_eq!(place(first_of(k) + first_of(k) - 1), (k, first_of(k) - 1));
            assert_eq!(place(first_of(k + 1)), (k + 1, 0));
        }
    }

    #[test]
    fn a_deep_stack_keeps_its_entries_and_gives_its_chunks_back() {
        let s = empty();
        let n = 20 * INLINE + 7;
        for i in 0..n {
            assert!(s.push(|e| {
                e.sp.set(i as u64);
                e.ret.set(!(i as u64));
            }));
        }
        assert_eq!(s.depth(), n);
        // 256 inline, then chunks of 256, 512, 1024, 2048 and 4096 (to 8192).
        assert_eq!(s.chunks(), 5);
        for i in 0..n {
            assert_eq!((s.get(i).sp.get(), s.get(i).ret.get()), (i as u64, !(i as u64)));
        }
        // Removing from the middle moves the ones above down.
        s.remove_at(3);
        assert_eq!((s.get(3).sp.get(), s.get(n - 2).sp.get()), (4, n as u64 - 1));
        // Back up to the inline entries: one spare chunk is kept.
        while s.depth() > 10 {
            s.remove_at(s.depth() - 1);
        }
        assert_eq!(s.chunks(), 1);
        assert_eq!((s.get(2).sp.get(), s.get(9).sp.get()), (2, 10));
        s.unmap_all();
        assert_eq!((s.chunks(), s.depth()), (0, 0));
    }
}
