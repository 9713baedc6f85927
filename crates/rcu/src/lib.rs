//! A read-copy-update cell: readers see an immutable snapshot, writers publish a new one and
//! wait for a grace period before they get the old one back.
//!
//! Reads are **async-signal-safe**: a read is a handful of atomic operations, allocates
//! nothing and never blocks, so a signal handler may read while the thread it interrupted is
//! in the middle of a write. This is what dprobe's trap handler uses to find the probe at an
//! address while other threads register and unregister probes.
//!
//! The grace period is the classic two-counter epoch scheme: a reader announces itself in the
//! counter of the current epoch parity and re-checks the epoch before it loads the pointer; a
//! writer swaps the pointer, flips the epoch, and waits until the counter of the old parity
//! drains. Readers that arrive after the flip can only see the new snapshot.
//!
//! A cell may also be read inside the read-side sections of a grace period kept elsewhere
//! (see [`Rcu::with_grace`]): such a read announces nothing, and costs a load.
//!
//! ```
//! use dprobe_rcu::Rcu;
//! let cell = Rcu::new(vec![1, 2, 3]);
//! assert_eq!(cell.read(|v| v.len()), 3);
//! let old = cell.replace(vec![4]);
//! assert_eq!(old, vec![1, 2, 3]);
//! assert_eq!(cell.read(|v| v[0]), 4);
//! ```

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

/// A published value of type `T` that many threads (and signal handlers) read while one
/// writer at a time replaces it.
pub struct Rcu<T> {
    current: AtomicPtr<T>,
    epoch: AtomicUsize,
    readers: [AtomicUsize; 2],
    writer: Mutex<()>,
    /// Waits for the readers of [`Rcu::read_in_section`], if it has any.
    outer_grace: Option<fn()>,
}

// SAFETY: the cell hands out `&T` to any thread (needs `T: Sync`) and moves `T` values between
// threads when it replaces them (needs `T: Send`); the raw pointer is owned by the cell.
unsafe impl<T: Send + Sync> Sync for Rcu<T> {}
// SAFETY: as above; the cell owns the boxed `T` it points to.
unsafe impl<T: Send + Sync> Send for Rcu<T> {}

struct Announce<'a>(&'a AtomicUsize);

impl Drop for Announce<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl<T> Rcu<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Rcu {
            current: AtomicPtr::new(Box::into_raw(Box::new(value))),
            epoch: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            writer: Mutex::new(()),
            outer_grace: None,
        }
    }

    /// A cell holding `value` that may also be read with [`Rcu::read_in_section`] inside the
    /// read-side sections of another grace period: `grace` returns once every such section
    /// that began before the call has ended. Writers wait for it too before they give an old
    /// snapshot back.
    pub fn with_grace(value: T, grace: fn()) -> Self {
        let mut cell = Rcu::new(value);
        cell.outer_grace = Some(grace);
        cell
    }

    /// Run `f` on the current snapshot.
    ///
    /// Async-signal-safe and wait-free apart from a retry when a writer flips the epoch between
    /// two loads: no lock, no allocation, no system call. The snapshot stays valid until `f`
    /// returns, so a writer's [`Rcu::replace`] waits for `f`. Do not call `replace` from
    /// inside `f`: it would wait for itself.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let announce = loop {
            let parity = self.epoch.load(SeqCst) & 1;
            self.readers[parity].fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) & 1 == parity {
                break Announce(&self.readers[parity]);
            }
            self.readers[parity].fetch_sub(1, SeqCst);
        };
        let ptr = self.current.load(SeqCst);
        // SAFETY: `ptr` came from `Box::into_raw` and is freed only by `replace`/`drop`.
        // `replace` swaps it out *before* flipping the epoch and frees it only after the
        // counter of the old parity drained; this reader is counted in the parity it
        // re-checked after announcing itself, so either it loaded the pointer before the swap
        // and the writer waits for `announce` to drop, or it announced after the flip and
        // loaded the new pointer. `drop` has `&mut self`, so no reader is alive then.
        let value = unsafe { &*ptr };
        let result = f(value);
        drop(announce);
        result
    }

    /// Read the current snapshot without announcing the reader: a load, no atomic
    /// read-modify-write.
    ///
    /// # Safety
    /// The cell was made by [`Rcu::with_grace`], and the caller is inside a read-side section
    /// of that grace period from before this call until after `f` returns, so that a writer's
    /// wait for `grace` covers this read.
    pub unsafe fn read_in_section<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        debug_assert!(self.outer_grace.is_some());
        // SAFETY: writers swap the pointer, then wait for `grace`, which waits for the
        // caller's section (per the contract), before they free the old snapshot.
        f(unsafe { &*self.current.load(SeqCst) })
    }

    /// Publish `value` and return the previous snapshot once no reader can still see it.
    ///
    /// Blocks (yielding, then sleeping) for the grace period. Must not be called from a signal
    /// handler or from inside [`Rcu::read`].
    pub fn replace(&self, value: T) -> T {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.swap(Box::into_raw(Box::new(value)), SeqCst);
        self.synchronize_locked();
        // SAFETY: `old` came from `Box::into_raw`; it is no longer published and the grace
        // period above ensured that no reader holds a reference to it.
        *unsafe { Box::from_raw(old) }
    }

    /// Publish `f(current)` (computed under the writer lock) and return the old snapshot after
    /// the grace period.
    pub fn update(&self, f: impl FnOnce(&T) -> T) -> T {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: only writers replace the pointer, and we hold the writer lock, so the
        // current value stays alive while `f` reads it.
        let next = f(unsafe { &*self.current.load(SeqCst) });
        let old = self.current.swap(Box::into_raw(Box::new(next)), SeqCst);
        self.synchronize_locked();
        // SAFETY: as in `replace`.
        *unsafe { Box::from_raw(old) }
    }

    /// In a child process just forked, with one thread: the readers counted are the parent's
    /// other threads, which the child does not have; forget them, so that a grace period in
    /// the child does not wait for them forever. The child's own thread must not be reading.
    pub fn forget_readers_after_fork(&self) {
        for r in &self.readers {
            r.store(0, SeqCst);
        }
    }

    /// Wait until every reader that started before this call has finished.
    pub fn synchronize(&self) {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.synchronize_locked();
    }

    fn synchronize_locked(&self) {
        if let Some(grace) = self.outer_grace {
            grace();
        }
        let old_parity = self.epoch.fetch_add(1, SeqCst) & 1;
        let mut spins = 0u32;
        while self.readers[old_parity].load(SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

impl<T> Drop for Rcu<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no reader or writer is active; the pointer is the cell's
        // own box.
        drop(unsafe { Box::from_raw(*self.current.get_mut()) });
    }
}
