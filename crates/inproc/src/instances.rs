//! A return probe's instances (the kernel's kretprobe instances): one per call in flight,
//! carrying the entry handler's private data to the return handler.
//!
//! With a `maxactive` the pool holds that many, made at registration, and never more: a call
//! that finds none free is missed and counted (kretprobe semantics). Without one (the
//! default) it has no fixed limit: it starts with [`FIRST`] and, when a call finds none free,
//! grows by a chunk twice the size of the last, mapped on the hit path (see `mapped.rs`: no
//! heap, no lock). Only a failed mapping then misses a call. Chunks are kept until the probe
//! is gone.
//!
//! Free instances form a lock-free stack (a Treiber stack whose head carries a counter, so a
//! head taken and put back meanwhile is told apart), safe in signal handlers nested in its
//! own operations.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use crate::kretprobe::InstanceData;
use crate::{mapped, sys};

/// The size of an unlimited pool's first chunk.
pub(crate) const FIRST: usize = 64;
/// Chunk `k` holds `first << k` instances; 32 of them hold more than `u32` indices can name.
const CHUNKS: usize = 32;
/// The most instances a pool names (indices are `u32`, and the free stack's head keeps
/// `index + 1`).
const MAX_INSTANCES: usize = u32::MAX as usize - 1;

/// Aligned to a cache line, so that no line holds two instances (at 72 bytes, two threads'
/// instances shared one, and every call of each took the line from the other's core): 128
/// bytes, two lines.
#[repr(align(64))]
struct Instance {
    /// The thread that holds it; 0 when free.
    owner: AtomicU32,
    /// The next free instance's index + 1 (0: none), while it is free.
    next: AtomicU32,
    data: [AtomicU64; 8],
}

pub(crate) struct Instances {
    /// The size of chunk 0.
    first: usize,
    /// Whether it may grow past chunk 0.
    grows: bool,
    /// Chunk `k`, or null while it is not mapped.
    chunks: [AtomicPtr<Instance>; CHUNKS],
    /// The free stack's head: a counter in the high half, the top's index + 1 in the low.
    free: AtomicU64,
}

/// Chunk `k`'s first instance.
fn first_index(first: usize, k: usize) -> usize {
    first * ((1 << k) - 1)
}

impl Instances {
    /// A pool of exactly `maxactive` instances, or, with none, one that grows.
    pub(crate) fn new(maxactive: Option<usize>) -> Instances {
        let pool = Instances {
            first: maxactive.unwrap_or(FIRST).clamp(1, MAX_INSTANCES),
            grows: maxactive.is_none(),
            chunks: Default::default(),
            free: AtomicU64::new(0),
        };
        // Made now (not on the hit path); should it fail, the first call tries again.
        pool.grow();
        pool
    }

    /// The most instances it holds at once: `None` when it grows without a fixed limit.
    pub(crate) fn limit(&self) -> Option<usize> {
        (!self.grows).then_some(self.first)
    }

    /// Instances taken and not given back: those with an owner, counted when asked rather
    /// than kept in a counter that every call would update twice with an atomic
    /// read-modify-write.
    pub(crate) fn in_flight(&self) -> u64 {
        self.held().filter(|(_, inst)| inst.owner.load(Relaxed) != 0).count() as u64
    }

    /// Every instance of the mapped chunks, with its index.
    fn held(&self) -> impl Iterator<Item = (usize, &Instance)> + '_ {
        (0..CHUNKS).take_while(|&k| !self.chunks[k].load(Acquire).is_null()).flat_map(move |k| {
            let start = first_index(self.first, k);
            (start..start + self.chunk_len(k)).map(move |i| (i, self.get(i).expect("mapped")))
        })
    }

    fn chunk_len(&self, k: usize) -> usize {
        self.first << k
    }

    fn chunk_bytes(&self, k: usize) -> usize {
        self.chunk_len(k) * std::mem::size_of::<Instance>()
    }

    /// Instance `i`, if its chunk is mapped.
    fn get(&self, i: usize) -> Option<&Instance> {
        // Every call looks its instance up several times: no division by a size only known at
        // run time (tens of cycles). A fixed pool is one chunk; a growing one starts at
        // `FIRST`, a power of two.
        let k = if self.grows {
            (i / FIRST + 1).ilog2() as usize
        } else if i < self.first {
            0
        } else {
            return None;
        };
        let chunk = NonNull::new(self.chunks.get(k)?.load(Acquire))?;
        // SAFETY: chunk k holds `first << k` instances from `first_index(k)`; zeroed memory is
        // a valid instance (atomics); chunks stay mapped as long as the pool.
        Some(unsafe { &*chunk.as_ptr().add(i - first_index(self.first, k)) })
    }

    /// Take a free instance for thread `tid`, growing the pool if it may; `None` when none
    /// is free and it may not (or the mapping failed).
    pub(crate) fn take(&self, tid: u32) -> Option<usize> {
        loop {
            if let Some(i) = self.take_free(tid) {
                return Some(i);
            }
            if !self.grow() {
                return None;
            }
        }
    }

    /// Take a free instance for thread `tid` without growing.
    pub(crate) fn take_free(&self, tid: u32) -> Option<usize> {
        let i = self.pop()?;
        self.get(i).expect("free instances are mapped").owner.store(tid.max(1), Relaxed);
        Some(i)
    }

    /// Give instance `i` back (nothing when it is free already: taken back from a dead
    /// thread).
    pub(crate) fn release(&self, i: usize) {
        let Some(inst) = self.get(i) else { return };
        if inst.owner.swap(0, AcqRel) != 0 {
            self.push(i);
        }
    }

    /// Keep instance `i`, held by live thread `tid`, out of the free stack for that thread's
    /// next call (see `exits.rs`'s parked instances): it is no longer in flight. `false` (and
    /// nothing done) for a pool with a fixed size, where another thread may need it, or an
    /// instance `tid` does not hold. Plain stores: only [`Instances::reclaim_dead_threads`]
    /// writes the owner of an instance another thread holds, and only a dead thread's.
    pub(crate) fn park(&self, i: usize, tid: u32) -> bool {
        let Some(inst) = self.get(i).filter(|inst| self.grows && inst.owner.load(Relaxed) == tid.max(1)) else {
            return false;
        };
        inst.owner.store(0, Release);
        true
    }

    /// Thread `tid` takes instance `i`, which it parked.
    pub(crate) fn unpark(&self, i: usize, tid: u32) {
        if let Some(inst) = self.get(i) {
            inst.owner.store(tid.max(1), Relaxed);
        }
    }

    /// A parked instance goes back to the free stack (its thread is gone).
    pub(crate) fn give_back_parked(&self, i: usize) {
        if self.get(i).is_some() {
            self.push(i);
        }
    }

    /// The private data of instance `i`.
    pub(crate) fn data(&self, i: usize) -> InstanceData {
        let mut data = InstanceData::default();
        if let Some(inst) = self.get(i) {
            for (v, src) in data.0.iter_mut().zip(&inst.data) {
                *v = src.load(Relaxed);
            }
        }
        data
    }

    /// Keep `data` in instance `i`.
    pub(crate) fn set_data(&self, i: usize, data: &InstanceData) {
        if let Some(inst) = self.get(i) {
            for (dst, v) in inst.data.iter().zip(data.0) {
                dst.store(v, Relaxed);
            }
        }
    }

    /// Give back the instances held by threads that no longer exist; returns how many. A
    /// system call per holder (the last few answers are kept).
    pub(crate) fn reclaim_dead_threads(&self) -> u64 {
        let pid = sys::own_pid();
        let mut known = [(0u32, false); 8];
        let mut reclaimed = 0;
        for (i, inst) in self.held() {
            let tid = inst.owner.load(Acquire);
            if tid == 0 {
                continue;
            }
            let gone = match known.iter().find(|(t, _)| *t == tid) {
                Some(&(_, gone)) => gone,
                None => {
                    // SAFETY: signal 0 only checks that the thread exists.
                    let r = unsafe { sys::raw_syscall6(libc::SYS_tgkill, [pid as u64, u64::from(tid), 0, 0, 0, 0]) };
                    let gone = r == -i64::from(libc::ESRCH);
                    known.rotate_right(1);
                    known[0] = (tid, gone);
                    gone
                }
            };
            // Still that thread's (not given back and taken again meanwhile).
            if gone && inst.owner.compare_exchange(tid, 0, AcqRel, Relaxed).is_ok() {
                self.push(i);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    fn pop(&self) -> Option<usize> {
        let mut head = self.free.load(Acquire);
        loop {
            let top = (head as u32).checked_sub(1)? as usize;
            let next = self.get(top).expect("free instances are mapped").next.load(Relaxed);
            let new = (head >> 32).wrapping_add(1) << 32 | u64::from(next);
            match self.free.compare_exchange_weak(head, new, AcqRel, Acquire) {
                Ok(_) => return Some(top),
                Err(now) => head = now,
            }
        }
    }

    fn push(&self, i: usize) {
        self.push_run(i, i);
    }

    /// Push instances `first..=last`, already linked to each other, `last` at the bottom.
    fn push_run(&self, first: usize, last: usize) {
        let bottom = self.get(last).expect("mapped");
        let mut head = self.free.load(Acquire);
        loop {
            bottom.next.store(head as u32, Relaxed);
            let new = (head >> 32).wrapping_add(1) << 32 | (first as u64 + 1);
            match self.free.compare_exchange_weak(head, new, AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Map the first chunk not mapped yet and put its instances on the free stack; `false`
    /// when there is none left to map or the mapping failed.
    #[cold]
    fn grow(&self) -> bool {
        let Some(k) = (0..CHUNKS).find(|&k| self.chunks[k].load(Acquire).is_null()) else { return false };
        if first_index(self.first, k + 1) > MAX_INSTANCES || (!self.grows && k > 0) {
            return false;
        }
        let Some(fresh) = mapped::map_zeroed(self.chunk_bytes(k)) else { return false };
        let fresh = fresh.cast::<Instance>();
        // Another thread, or a signal handler nested in this call, may have mapped chunk k
        // meanwhile: then theirs stands, and there are free instances again (or soon).
        if self.chunks[k].compare_exchange(std::ptr::null_mut(), fresh.as_ptr(), AcqRel, Acquire).is_err() {
            // SAFETY: ours, never published.
            unsafe { mapped::unmap(fresh.cast(), self.chunk_bytes(k)) };
            return true;
        }
        let (start, len) = (first_index(self.first, k), self.chunk_len(k));
        for j in 0..len - 1 {
            // SAFETY: within the chunk just mapped, which nobody else links yet.
            let inst = unsafe { &*fresh.as_ptr().add(j) };
            inst.next.store((start + j + 2) as u32, Relaxed);
        }
        self.push_run(start, start + len - 1);
        true
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for k in 0..CHUNKS {
            if let Some(p) = NonNull::new(*self.chunks[k].get_mut()) {
                // SAFETY: chunk k, mapped by `grow`; the pool is gone, so is every user.
                unsafe { mapped::unmap(p.cast(), self.chunk_bytes(k)) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_pool_holds_exactly_maxactive() {
        let pool = Instances::new(Some(3));
        let taken: Vec<_> = (0..3).map(|_| pool.take(7).expect("free")).collect();
        assert_eq!(pool.take(7), None);
        assert_eq!((pool.in_flight(), pool.limit()), (3, Some(3)));
        pool.release(taken[1]);
        pool.release(taken[1]);
        assert_eq!(pool.in_flight(), 2);
        assert_eq!(pool.take(7), Some(taken[1]));
    }

    #[test]
    fn a_parked_instance_is_out_of_flight_and_off_the_free_stack_until_its_thread_takes_it() {
        let pool = Instances::new(None);
        let every = |pool: &Instances| (0..FIRST).map(|_| pool.take(8).expect("free")).collect::<Vec<_>>();
        let parked = pool.take(7).expect("free");
        assert!(!pool.park(parked, 8), "only the thread holding it parks it");
        assert!(pool.park(parked, 7));
        assert_eq!(pool.in_flight(), 0);
        // Every other instance is handed out before the pool grows, never the parked one.
        let others = every(&pool);
        assert!(!others.contains(&parked), "{parked} handed out while parked");
        pool.unpark(parked, 7);
        assert_eq!(pool.in_flight(), FIRST as u64 + 1);
        pool.release(parked);
        assert_eq!(pool.take(9), Some(parked), "given back to the free stack by its release");
        let fixed = Instances::new(Some(2));
        let held = fixed.take(7).expect("free");
        assert!(!fixed.park(held, 7), "a fixed-size pool keeps its instances for every thread");
        let gone = pool.take(7).expect("grows");
        assert!(pool.park(gone, 7));
        pool.give_back_parked(gone);
        assert_eq!(pool.take(3), Some(gone), "a gone thread's parked instance is free again");
    }

    #[test]
    fn an_unlimited_pool_grows_and_keeps_every_instances_data() {
        let pool = Instances::new(None);
        let n = 10_000;
        let taken: Vec<_> = (0..n).map(|_| pool.take(7).expect("grows")).collect();
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), n, "every instance taken once");
        for (k, &i) in taken.iter().enumerate() {
            pool.set_data(i, &InstanceData([k as u64; 8]));
        }
        for (k, &i) in taken.iter().enumerate() {
            assert_eq!(pool.data(i), InstanceData([k as u64; 8]));
        }
        for &i in &taken {
            pool.release(i);
        }
        assert_eq!((pool.in_flight(), pool.limit()), (0, None));
    }

    #[test]
    fn four_threads_take_and_give_back_without_sharing_an_instance() {
        let pool = Instances::new(None);
        std::thread::scope(|s| {
            for t in 1..=4u32 {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..200u64 {
                        let mine: Vec<_> = (0..100).map(|_| pool.take(t).expect("grows")).collect();
                        for &i in &mine {
                            pool.set_data(i, &InstanceData([u64::from(t) << 32 | round; 8]));
                        }
                        for &i in &mine {
                            assert_eq!(pool.data(i).0[0], u64::from(t) << 32 | round, "not shared");
                            pool.release(i);
                        }
                    }
                });
            }
        });
        assert_eq!(pool.in_flight(), 0);
    }
}
