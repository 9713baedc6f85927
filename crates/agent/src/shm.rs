//! The memory the agent shares with the tracer: a `memfd` mapped by both processes, holding
//! each probe's counters and a lock-free ring of event records.
//!
//! The ring is core's ring protocol ([`dprobe_core::ring`], Dmitry Vyukov's bounded queue)
//! over cells laid out in the shared pages: every slot starts with its sequence number, then
//! the record's length and bytes. Producers are the probed threads, the consumer is the
//! tracer. A full ring drops the record and counts it: a probed thread never waits for the
//! tracer. Counters live outside the ring so that they stay
//! readable after the traced program ends, and cost no record.
//!
//! With stacks asked for, a record names one of the stack slots that follow the ring: the
//! registers the unwinder starts from and a copy of the thread's stack from its stack
//! pointer. A probed thread claims a free slot with one atomic exchange (none free: the event
//! goes without its stack, counted), the tracer frees it once it unwound the stack.
//!
//! The counts every hit adds to (a probe's hits and returns) are [`HitCount`]s: a word that
//! every thread of the program (and of its forked children, which share this memory) adds to
//! with a locked add would move from core to core at each hit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use dprobe_core::ring::{self, RingCells};
use dprobe_core::HitCount;
use memmap2::{MmapOptions, MmapRaw};

/// Bytes of one slot, its sequence word included.
pub const SLOT_BYTES: usize = 2048;
/// Slots in the ring.
pub const SLOTS: usize = 8192;
/// Probes a session can have (their counters are preallocated: 128 bytes each). Enough for
/// every function of the C library (`libc:*` comes to about 2,200).
pub const MAX_PROBES: usize = 4096;

const MAGIC: u64 = 0x6470_726f_6265_7238; // "dprober8"
/// The ring's and stack slots' words (0-7), then the `exec` gate's (`exec_gate.rs`), then the
/// doorbell, then the count of children that ran untraced, then the children's `exec` gates.
const HEADER_BYTES: usize = 256;
/// Byte of the first of the `exec` gate's 32-bit words (futex words).
const EXEC_GATE_AT: usize = 64;
/// Byte of the doorbell, a 32-bit futex word.
const DOORBELL_AT: usize = 72;
/// Byte of the count of children that ran untraced (a 64-bit word).
const UNTRACED_AT: usize = 80;
/// Byte of the count of object files the agent took over from dprobe (a 32-bit word).
const TAKEN_OVER_AT: usize = 88;
/// Byte of the tracer's bell, a 32-bit futex word dprobe waits on between its looks.
const TRACER_BELL_AT: usize = 92;
/// The agent leaves the program, which enters a new user namespace (`user_namespace.rs`):
/// the id of the thread that enters it, then dprobe's answer.
const LEFT_AT: usize = 96;
const LEFT_SEEN_AT: usize = 100;
/// In `LEFT_AT`, above the thread's id (below 2^22): why the agent leaves
/// (`user_namespace::ALONE`, `SANDBOXED`, `TRAP_BLOCKED`).
const LEFT_WHY_SHIFT: u32 = 30;
/// `LEFT_SEEN_AT`'s values after 0: dprobe claimed the leaving thread, dprobe is done with it,
/// the agent went unclaimed.
const CLAIMED: u32 = 1;
const WATCHED: u32 = 2;
const GAVE_UP: u32 = 3;
/// Byte of the first of the children's `exec` gates (two 32-bit words each).
const CHILD_GATES_AT: usize = 128;
/// Children that can ask before their `exec` at the same time (`exec_gate.rs`).
pub const CHILD_GATES: usize = 16;
const _: () = assert!(CHILD_GATES_AT + CHILD_GATES * 8 <= HEADER_BYTES);
const COUNTER_WORDS: usize = 16;
const COUNTERS_BYTES: usize = MAX_PROBES * COUNTER_WORDS * 8;
/// Each probe's counts that every hit adds to, after its counter words: hits, then returns.
const HIT_COUNTS_BYTES: usize = MAX_PROBES * 2 * std::mem::size_of::<HitCount>();
/// Where the ring starts.
const RING_AT: usize = HEADER_BYTES + COUNTERS_BYTES + HIT_COUNTS_BYTES;
// The hit counts' area and each count are 64-byte aligned, as a `HitCount` must be.
const _: () = assert!((HEADER_BYTES + COUNTERS_BYTES) % 64 == 0 && std::mem::size_of::<HitCount>() % 64 == 0);
/// Stack slots: events with a stack the tracer has not unwound yet.
pub const STACK_SLOTS: usize = 512;
/// Bytes of stack copied at most from the stack pointer up (the frames nearest the probe;
/// deeper callers are cut off there).
pub const STACK_COPY_BYTES: usize = 16 * 1024;
/// A stack slot: its state word, `ip`, `sp`, `bp`, the copy's length, then the copy.
const STACK_HEADER_BYTES: usize = 64;
const STACK_SLOT_BYTES: usize = STACK_HEADER_BYTES + STACK_COPY_BYTES;
const RING_BYTES: usize = SLOTS * SLOT_BYTES;
/// Total size of the shared memory.
pub const SHM_BYTES: usize = RING_AT + RING_BYTES + STACK_SLOTS * STACK_SLOT_BYTES;

/// A stack as a probed thread left it in a stack slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackCopy<'a> {
    /// `[ip, sp, bp]` at the hit.
    pub regs: [u64; 3],
    /// The stack's bytes from `sp` up.
    pub bytes: &'a [u8],
}

/// One counter of a probe, as indexes into its counter words.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// Times the probed place was reached.
    Hits = 0,
    /// Returns seen.
    Returns = 1,
    /// Entries whose return could not be watched (no instance free).
    Missed = 2,
    /// Hits inside a handler, which ran none.
    Reentered = 3,
    /// Pending returns abandoned (`longjmp`, exceptions, exited threads).
    Abandoned = 4,
    /// Hits whose event did not reach the ring (full, or no value storage free).
    Lost = 5,
    /// A probe that waited for its library: where it is placed now (0: not placed).
    PlacedAt = 6,
    /// A probe that waited for its library: times it was placed there (a load each).
    Loads = 7,
    /// Times the probe's `int3` was found taken away (another tool's uprobe removed) and put
    /// back.
    Rearmed = 8,
    /// A probe that waited for its library: 1 once the library was loaded and the probe could
    /// not be resolved or placed there.
    RefusedAtLoad = 9,
}

/// The `exec` gate's words in the shared memory ([`Shm::exec_gate`]).
#[derive(Debug, Clone, Copy)]
pub struct ExecGateWords<'a> {
    /// Nonzero while the agent asks dprobe before the program's `exec`.
    pub open: &'a AtomicU32,
    /// Where the request is (`exec_gate.rs`: idle, asking, claimed by dprobe, watched, its
    /// `exec` failed, being let go); a
    /// futex word the asking thread waits on, which dprobe wakes when it changes it.
    pub state: &'a AtomicU32,
}

/// One child's `exec` gate in the shared memory ([`Shm::child_gate`]): a child of the program
/// (forked, or sharing its memory) about to `exec` while dprobe follows children.
#[derive(Debug, Clone, Copy)]
pub struct ChildGate<'a> {
    /// The asking child's process id; 0 while the gate is free (a child takes it by moving it
    /// from 0, and gives it back once answered).
    pub pid: &'a AtomicU32,
    /// The request, as the program's own (`ExecGateWords::state`): idle, asking (with the
    /// thread's id), claimed, watched.
    pub state: &'a AtomicU32,
}

/// The shared memory, mapped in this process.
///
/// Shared between threads: the mapping is only accessed through atomics and through slots a
/// producer owns exclusively between claiming and publishing them (see `push`).
pub struct Shm {
    /// A shared read-write mapping of the whole file, unmapped on drop (the agent drops it
    /// only after every probe is unregistered).
    map: MmapRaw,
    /// Its file, until [`Shm::take_file`].
    fd: Option<OwnedFd>,
}

impl Shm {
    /// Make a new shared memory (a `memfd`), initialised empty.
    pub fn create() -> std::io::Result<Shm> {
        // SAFETY: the name is a NUL-terminated literal.
        let fd = unsafe { libc::memfd_create(c"dprobe-agent-ring".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SHM_BYTES as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The ring is ready as the file is, all zeros (see `RingCells`): no page of it is
        // touched before a record is written there.
        let shm = Shm::map(fd)?;
        shm.word(3).store(SLOTS as u64, Relaxed);
        shm.word(0).store(MAGIC, Release);
        Ok(shm)
    }

    /// Map shared memory received from the other side; checks that it is one.
    pub fn open(fd: OwnedFd) -> std::io::Result<Shm> {
        let shm = Shm::map(fd)?;
        if shm.word(0).load(Acquire) != MAGIC || shm.word(3).load(Relaxed) != SLOTS as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not dprobe's agent ring"));
        }
        Ok(shm)
    }

    fn map(fd: OwnedFd) -> std::io::Result<Shm> {
        let map = MmapOptions::new().len(SHM_BYTES).map_raw(&fd)?;
        Ok(Shm { map, fd: Some(fd) })
    }

    /// The first byte of the mapping.
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Its file's inode number (as `/proc/PID/maps` shows it), while the file is open.
    pub fn inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let fd = self.fd.as_ref()?;
        std::fs::File::from(fd.try_clone().ok()?).metadata().ok().map(|m| m.ino())
    }

    /// The descriptor, to send to the other side.
    pub fn fd(&self) -> &OwnedFd {
        self.fd.as_ref().expect("the shared memory's file is open until take_file")
    }

    /// The file, taken out, the mapping kept: in a traced program it is closed once dprobe has
    /// it, so that no descriptor of the agent's is left for the program to close and reuse.
    pub fn take_file(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < EXEC_GATE_AT / 8);
        // SAFETY: inside the mapping, 8-byte aligned (the mapping is page-aligned), and only
        // ever accessed atomically.
        unsafe { &*(self.base().add(i * 8) as *const AtomicU64) }
    }

    /// The `exec` gate's words (see `exec_gate.rs`): whether the agent asks dprobe before an
    /// `exec`, and the state of the request.
    pub fn exec_gate(&self) -> ExecGateWords<'_> {
        let word = |i: usize| {
            // SAFETY: inside the header, 4-byte aligned, only ever accessed atomically.
            unsafe { &*(self.base().add(EXEC_GATE_AT + i * 4) as *const AtomicU32) }
        };
        ExecGateWords { open: word(0), state: word(1) }
    }

    /// The `i`th child's `exec` gate (`i` < [`CHILD_GATES`]).
    pub fn child_gate(&self, i: usize) -> ChildGate<'_> {
        assert!(i < CHILD_GATES);
        let word = |w: usize| {
            // SAFETY: inside the header (asserted above), 4-byte aligned, only ever accessed
            // atomically.
            unsafe { &*(self.base().add(CHILD_GATES_AT + i * 8 + w * 4) as *const AtomicU32) }
        };
        ChildGate { pid: word(0), state: word(1) }
    }

    /// The agent's doorbell: a futex word the agent's thread waits on between its looks at
    /// the tracer's socket, rung ([`Shm::ring`]) by the tracer after each message it sends and
    /// by a thread of the program that has the agent's thread wanted (`follow.rs`).
    pub fn doorbell(&self) -> &AtomicU32 {
        // SAFETY: inside the header, 4-byte aligned, only ever accessed atomically.
        unsafe { &*(self.base().add(DOORBELL_AT) as *const AtomicU32) }
    }

    /// The count of children that ran untraced.
    fn untraced_word(&self) -> &AtomicU64 {
        // SAFETY: inside the header, 8-byte aligned, only ever accessed atomically.
        unsafe { &*(self.base().add(UNTRACED_AT) as *const AtomicU64) }
    }

    /// A child runs untraced: a fork not followed, or the program a child executes.
    /// Async-signal-safe.
    pub fn child_untraced(&self) {
        self.untraced_word().fetch_add(1, Relaxed);
    }

    /// How many children ran untraced.
    pub fn untraced_children(&self) -> u64 {
        self.untraced_word().load(Relaxed)
    }

    fn taken_over_word(&self) -> &AtomicU32 {
        // SAFETY: inside the header, 4-byte aligned, only ever accessed atomically.
        unsafe { &*(self.base().add(TAKEN_OVER_AT) as *const AtomicU32) }
    }

    /// The agent took over `n` of the object files dprobe read (`dprobe_sym::import_objects`).
    pub fn took_over_objects(&self, n: u32) {
        self.taken_over_word().store(n, Relaxed);
    }

    /// How many object files the agent took over from dprobe rather than reading them.
    pub fn objects_taken_over(&self) -> u32 {
        self.taken_over_word().load(Relaxed)
    }

    fn left_word(&self, at: usize) -> &AtomicU32 {
        // SAFETY: inside the header, 4-byte aligned, only ever accessed atomically.
        unsafe { &*(self.base().add(at) as *const AtomicU32) }
    }

    /// The agent leaves the program, whose thread `tid` (as the program numbers it) enters a
    /// new user namespace, alone in its process, or puts a thread (or every thread) under a
    /// seccomp filter, or blocks `SIGTRAP` by name (`why`, as `user_namespace` says): dprobe is
    /// told (its bell rung), and given
    /// `patience` to claim that thread, to watch it for its `exec`, then as long again to do so
    /// once claimed; unclaimed (or `gone` says dprobe went away), the agent takes its word back
    /// ([`GAVE_UP`]) and goes.
    pub fn leave_first(&self, tid: i32, why: u32, patience: std::time::Duration, gone: impl Fn() -> bool) {
        use dprobe_inproc::raw_calls::{futex_wait, monotonic_ns};
        self.left_word(LEFT_AT).store(tid as u32 | why << LEFT_WHY_SHIFT, Release);
        self.ring_tracer();
        let seen = self.left_word(LEFT_SEEN_AT);
        let slice = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        let (mut since, mut extended) = (monotonic_ns(), false);
        loop {
            let now = seen.load(Acquire);
            if now == WATCHED || now == GAVE_UP {
                return;
            }
            // dprobe went away: no one claims it.
            if now == 0 && gone() && seen.compare_exchange(0, GAVE_UP, AcqRel, Acquire).is_ok() {
                return;
            }
            if monotonic_ns().saturating_sub(since) >= patience.as_nanos() as u64 {
                match now {
                    // dprobe never claimed it: it will not.
                    0 if seen.compare_exchange(0, GAVE_UP, AcqRel, Acquire).is_ok() => return,
                    // Claimed: once more as long for the watch.
                    CLAIMED if !extended => (since, extended) = (monotonic_ns(), true),
                    CLAIMED => return,
                    _ => {}
                }
            }
            futex_wait(seen, now, &slice, false);
        }
    }

    /// The thread the agent leaves the program for, and why ([`Shm::leave_first`]), until
    /// dprobe claims it ([`Shm::claim_the_leaving`]) or the agent took its word back.
    pub fn leaving_thread(&self) -> Option<(i32, u32)> {
        let word = self.left_word(LEFT_AT).load(Acquire);
        let (tid, why) = (word & ((1 << LEFT_WHY_SHIFT) - 1), word >> LEFT_WHY_SHIFT);
        (tid != 0 && self.left_word(LEFT_SEEN_AT).load(Acquire) == 0).then_some((tid as i32, why))
    }

    /// dprobe takes the leaving thread to watch: whether the agent still waits for it.
    pub fn claim_the_leaving(&self) -> bool {
        self.left_word(LEFT_SEEN_AT).compare_exchange(0, CLAIMED, AcqRel, Acquire).is_ok()
    }

    /// dprobe watches the leaving thread (or could not): the agent goes.
    pub fn let_the_agent_leave(&self) {
        let seen = self.left_word(LEFT_SEEN_AT);
        seen.store(WATCHED, Release);
        // Shared (not private): the agent waits in the program's process.
        dprobe_inproc::raw_calls::futex_wake(seen, false);
    }

    /// Why the agent left the program ([`Shm::leave_first`]), if it did.
    pub fn why_the_agent_left(&self) -> Option<u32> {
        let word = self.left_word(LEFT_AT).load(Acquire);
        (word != 0).then_some(word >> LEFT_WHY_SHIFT)
    }

    /// The tracer's bell: rung by a thread that asks dprobe before its `exec`
    /// (`exec_gate.rs`), and waited on by dprobe between its looks at the program.
    pub fn tracer_bell(&self) -> &AtomicU32 {
        // SAFETY: inside the header, 4-byte aligned, only ever accessed atomically.
        unsafe { &*(self.base().add(TRACER_BELL_AT) as *const AtomicU32) }
    }

    /// Ring the tracer's bell: dprobe, if it waits between its looks, looks at once.
    /// Async-signal-safe.
    pub fn ring_tracer(&self) {
        let bell = self.tracer_bell();
        bell.fetch_add(1, Release);
        // Shared (not private): dprobe waits in another process.
        dprobe_inproc::raw_calls::futex_wake(bell, false);
    }

    /// Ring the doorbell: the agent's thread, if it waits, looks at once. Async-signal-safe.
    pub fn ring(&self) {
        let bell = self.doorbell();
        bell.fetch_add(1, Release);
        // Shared (not private): rung from the tracer's process too.
        dprobe_inproc::raw_calls::futex_wake(bell, false);
    }

    fn counter_word(&self, probe: usize, counter: Counter) -> Option<&AtomicU64> {
        (probe < MAX_PROBES).then(|| {
            let at = HEADER_BYTES + (probe * COUNTER_WORDS + counter as usize) * 8;
            // SAFETY: inside the counters area, aligned, only accessed atomically.
            unsafe { &*(self.base().add(at) as *const AtomicU64) }
        })
    }

    fn slot(&self, i: usize) -> *mut u8 {
        // SAFETY: i < SLOTS (callers mask it), so the slot is inside the mapping.
        unsafe { self.base().add(RING_AT + i * SLOT_BYTES) }
    }

    fn stack_slot(&self, i: usize) -> *mut u8 {
        // SAFETY: i < STACK_SLOTS (callers check it), so the slot is inside the mapping.
        unsafe { self.base().add(RING_AT + RING_BYTES + i * STACK_SLOT_BYTES) }
    }

    fn stack_word(&self, i: usize, w: usize) -> &AtomicU64 {
        // SAFETY: a word of the slot's header, aligned; accessed atomically.
        unsafe { &*(self.stack_slot(i).add(w * 8) as *const AtomicU64) }
    }

    /// Claim a free stack slot and have `fill` write into it the registers and the stack's
    /// bytes (returning how many it wrote); returns the slot's number, `None` when no slot is
    /// free (counted). Lock-free and async-signal-safe: a few atomic exchanges, no wait.
    pub fn put_stack(&self, fill: impl FnOnce(&mut [u64; 3], &mut [u8]) -> usize) -> Option<u16> {
        let start = self.word(6).fetch_add(1, Relaxed) as usize;
        let Some(i) = (0..STACK_SLOTS)
            .map(|k| (start + k) % STACK_SLOTS)
            .find(|&i| self.stack_word(i, 0).compare_exchange(0, 1, Acquire, Relaxed).is_ok())
        else {
            self.word(7).fetch_add(1, Relaxed);
            return None;
        };
        let mut regs = [0u64; 3];
        // SAFETY: the slot is ours from the exchange above until the tracer frees it after
        // reading the record that names it; the copy follows the slot's header.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(self.stack_slot(i).add(STACK_HEADER_BYTES), STACK_COPY_BYTES) };
        let used = fill(&mut regs, bytes).min(STACK_COPY_BYTES);
        for (w, v) in regs.iter().enumerate() {
            self.stack_word(i, 1 + w).store(*v, Relaxed);
        }
        self.stack_word(i, 4).store(used as u64, Relaxed);
        Some(i as u16)
    }

    /// The stack in slot `i`, written before the record that names it was published.
    pub fn stack(&self, i: u16) -> Option<StackCopy<'_>> {
        let i = usize::from(i);
        if i >= STACK_SLOTS || self.stack_word(i, 0).load(Acquire) != 1 {
            return None;
        }
        let regs = [1, 2, 3].map(|w| self.stack_word(i, w).load(Relaxed));
        let len = (self.stack_word(i, 4).load(Relaxed) as usize).min(STACK_COPY_BYTES);
        // SAFETY: the slot stays claimed, and unwritten, until `free_stack`.
        let bytes = unsafe { std::slice::from_raw_parts(self.stack_slot(i).add(STACK_HEADER_BYTES), len) };
        Some(StackCopy { regs, bytes })
    }

    /// Give stack slot `i` back (its record was read, or could not be written).
    pub fn free_stack(&self, i: u16) {
        if usize::from(i) < STACK_SLOTS {
            self.stack_word(usize::from(i), 0).store(0, Release);
        }
    }

    /// Whether a stack slot is still claimed: a stack the tracer has not finished with.
    pub fn stacks_pending(&self) -> bool {
        (0..STACK_SLOTS).any(|i| self.stack_word(i, 0).load(Acquire) != 0)
    }

    /// Events that went without their stack: no stack slot was free.
    pub fn stacks_lost(&self) -> u64 {
        self.word(7).load(Relaxed)
    }

    /// Add `n` to a counter of `probe`. Lock-free, async-signal-safe.
    pub fn add(&self, probe: usize, counter: Counter, n: u64) {
        if let Some(w) = self.counter_word(probe, counter) {
            w.fetch_add(n, Relaxed);
        }
    }

    /// Add one to a counter of `probe` for `thread`, a word no other live thread of any
    /// process that maps this memory has, and which later threads have again
    /// (`dprobe_inproc::count_key`): a probe's hits and returns without a locked add or a
    /// shared cache line for the first threads that count ([`HitCount::add_by`], whose rule
    /// against nested adds the agent's engine keeps). Lock-free, async-signal-safe.
    pub fn count_by(&self, probe: usize, counter: Counter, thread: u64) {
        match self.hit_count(probe, counter) {
            Some(c) => c.add_by(thread),
            None => self.add(probe, counter, 1),
        }
    }

    /// The [`HitCount`] of a counter every hit adds to (hits, returns) of `probe`.
    fn hit_count(&self, probe: usize, counter: Counter) -> Option<&HitCount> {
        let k = match counter {
            Counter::Hits => 0,
            Counter::Returns => 1,
            _ => return None,
        };
        (probe < MAX_PROBES).then(|| {
            let at = HEADER_BYTES + COUNTERS_BYTES + (probe * 2 + k) * std::mem::size_of::<HitCount>();
            // SAFETY: inside the hit counts' area, 64-byte aligned (the mapping is page-aligned,
            // the area starts and each count is sized at a multiple of 64), zeroed when made (a
            // new count), and only ever accessed through the count's atomics.
            unsafe { &*(self.base().add(at) as *const HitCount) }
        })
    }

    /// Set a counter of `probe` (the agent's copy of a figure the engine keeps).
    pub fn set(&self, probe: usize, counter: Counter, n: u64) {
        if let Some(w) = self.counter_word(probe, counter) {
            w.store(n, Relaxed);
        }
    }

    /// A counter of `probe`.
    pub fn get(&self, probe: usize, counter: Counter) -> u64 {
        let counted = self.hit_count(probe, counter).map_or(0, HitCount::get);
        counted + self.counter_word(probe, counter).map_or(0, |w| w.load(Relaxed))
    }

    /// Records dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        RingCells::dropped(self).load(Relaxed)
    }

    /// Write one record with `fill` (given the slot's payload, returns the bytes used).
    /// `false` when the ring is full: the record is dropped and counted. Lock-free and
    /// async-signal-safe: never blocks, never allocates.
    pub fn push(&self, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let Some(c) = ring::claim(self) else { return false };
        let slot = self.slot(c.slot);
        // SAFETY: the slot is ours from the claim until it is published below; its payload
        // follows the sequence word and the length word.
        let payload = unsafe { std::slice::from_raw_parts_mut(slot.add(16), SLOT_BYTES - 16) };
        let used = fill(payload).min(SLOT_BYTES - 16);
        // SAFETY: the length word, inside the slot we own.
        unsafe { (slot.add(8) as *mut u64).write(used as u64) };
        ring::publish(self, c);
        true
    }

    /// Take the oldest record: `read` is given its payload. `false` when the ring is empty.
    pub fn pop(&self, read: impl FnOnce(&[u8])) -> bool {
        let Some(c) = ring::take(self) else { return false };
        let slot = self.slot(c.slot);
        // SAFETY: the producer published this slot and no producer writes it again until it
        // is released below.
        let len = unsafe { (slot.add(8) as *const u64).read() } as usize;
        // SAFETY: as above; the length is clamped to the slot.
        let payload = unsafe { std::slice::from_raw_parts(slot.add(16), len.min(SLOT_BYTES - 16)) };
        read(payload);
        ring::release(self, c);
        true
    }
}

/// The ring's cells in the header words: 2 the head, 4 the tail, 5 the drops (0 is the magic
/// number, 3 the slot count, 6 where stack slots are looked for first, 7 the stacks lost).
impl RingCells for Shm {
    fn capacity(&self) -> usize {
        SLOTS
    }
    fn sequence(&self, i: usize) -> &AtomicU64 {
        // SAFETY: a slot's first word, aligned, only accessed atomically.
        unsafe { &*(self.slot(i) as *const AtomicU64) }
    }
    fn tail(&self) -> &AtomicU64 {
        self.word(4)
    }
    fn head(&self) -> &AtomicU64 {
        self.word(2)
    }
    fn dropped(&self) -> &AtomicU64 {
        self.word(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident bytes of `shm`'s mapping.
    fn resident_bytes(shm: &Shm) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", shm.base() as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        let rss = lines.find_map(|l| l.strip_prefix("Rss:")).expect("the ring is mapped");
        rss.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    /// A new ring is ready as the memory file is (zeros), so loading the agent touches none of
    /// its 16 MiB; records still go round it in order, many times over.
    #[test]
    fn a_new_ring_is_ready_untouched_and_goes_round() {
        let shm = Shm::create().unwrap();
        let resident = resident_bytes(&shm);
        assert!(resident < 64 * 1024, "{resident} bytes resident");
        for round in 0..3 * SLOTS as u64 {
            assert!(shm.push(|b| {
                b[..8].copy_from_slice(&round.to_le_bytes());
                8
            }));
            let mut got = None;
            assert!(shm.pop(|b| got = Some(u64::from_le_bytes(b[..8].try_into().unwrap()))));
            assert_eq!(got, Some(round));
        }
        assert!(!shm.pop(|_| {}), "empty again");
    }

    #[test]
    fn records_come_out_in_order_and_a_full_ring_counts_its_drops() {
        let shm = Shm::create().unwrap();
        for i in 0..SLOTS as u64 + 3 {
            shm.push(|p| {
                p[..8].copy_from_slice(&i.to_le_bytes());
                8
            });
        }
        assert_eq!(shm.dropped(), 3);
        let other = Shm::open(shm.fd().try_clone().unwrap()).unwrap();
        for i in 0..SLOTS as u64 {
            let mut got = 0;
            assert!(other.pop(|p| got = u64::from_le_bytes(p.try_into().unwrap())));
            assert_eq!(got, i);
        }
        assert!(!other.pop(|_| {}));
        shm.add(3, Counter::Hits, 5);
        assert_eq!(other.get(3, Counter::Hits), 5);
        assert_eq!(other.get(MAX_PROBES, Counter::Hits), 0, "past the last probe: nothing");
    }

    #[test]
    fn a_stack_slot_is_held_until_freed_and_none_free_is_counted() {
        let shm = Shm::create().unwrap();
        let other = Shm::open(shm.fd().try_clone().unwrap()).unwrap();
        let first = shm
            .put_stack(|regs, bytes| {
                *regs = [1, 2, 3];
                bytes[..4].copy_from_slice(b"abcd");
                4
            })
            .unwrap();
        assert_eq!(other.stack(first), Some(StackCopy { regs: [1, 2, 3], bytes: b"abcd" }));
        let rest: Vec<u16> = (1..STACK_SLOTS).map(|_| shm.put_stack(|_, _| 0).unwrap()).collect();
        assert!(!rest.contains(&first));
        assert_eq!(shm.put_stack(|_, _| 0), None);
        assert_eq!(other.stacks_lost(), 1);
        assert!(shm.stacks_pending());
        other.free_stack(first);
        assert_eq!(other.stack(first), None);
        assert_eq!(shm.put_stack(|_, _| 0), Some(first));
    }

    #[test]
    fn hits_counted_by_threads_and_by_a_forked_child_add_up_exactly() {
        const CALLS: u64 = 1_000_000;
        let shm = Shm::create().unwrap();
        let other = Shm::open(shm.fd().try_clone().unwrap()).unwrap();
        // Each thread with a key of its own, as `dprobe_inproc::count_key` gives (its tests
        // check a forked child's is its own): here the kernel thread id. A forked child's
        // thread has the forking thread's thread pointer: counted by that pointer, the two
        // would own one stripe and lose counts (checked: this test then fails).
        let count = |shm: &Shm| {
            // SAFETY: gettid has no preconditions.
            let key = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
            (0..CALLS).for_each(|_| shm.count_by(5, Counter::Hits, key));
        };
        // Two threads: stripes are left for the two below.
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| count(&shm));
            }
        });
        // The child and the forking thread count at the same time: each waits until the
        // other is ready (probe 9's counter words).
        let ready = |shm: &Shm, mine: Counter, theirs: Counter| {
            shm.add(9, mine, 1);
            while shm.get(9, theirs) == 0 {
                std::hint::spin_loop();
            }
        };
        // SAFETY: the child only counts into the shared mapping and leaves with `_exit`,
        // running no code of the harness's; the parent waits for it.
        unsafe {
            let child = libc::fork();
            if child == 0 {
                ready(&shm, Counter::Lost, Counter::Missed);
                count(&shm);
                libc::_exit(0);
            }
            assert!(child > 0, "fork");
            ready(&shm, Counter::Missed, Counter::Lost);
            count(&shm);
            let mut status = 0;
            assert_eq!(libc::waitpid(child, &mut status, 0), child);
            assert_eq!(status, 0, "the child counted and left");
        }
        assert_eq!(other.get(5, Counter::Hits), 4 * CALLS, "read from the other mapping");
        shm.count_by(5, Counter::Lost, 0);
        shm.count_by(5, Counter::Returns, 0);
        assert_eq!((other.get(5, Counter::Lost), other.get(5, Counter::Returns)), (1, 1));
        assert_eq!(other.get(4, Counter::Hits) + other.get(6, Counter::Hits), 0, "the next probes' untouched");
    }
}
