//! Each thread's state on the hit path, kept without thread-local storage.
//!
//! `thread_local!` in a library the program loads with `dlopen` (dprobe's agent) is dynamic
//! TLS: a thread's first access goes through `__tls_get_addr`, which allocates the thread's
//! block with `malloc`, here inside a signal handler that may have interrupted `malloc`
//! itself. So dprobe keeps its per-thread state in one table, mapped when the engine starts,
//! and finds a thread's entry by its thread pointer (`%fs:0`: the C library's descriptor of
//! the thread, unique among live threads, read in one instruction).
//!
//! A thread claims an entry the first time it needs one: the first free entry of a short run
//! that starts where its pointer hashes, taken with a compare-and-swap (its pages are touched
//! then: the table costs memory only for the threads that reach dprobe's code). It gives the
//! entry back, zeroed, when it exits: a thread-specific key's destructor, set with
//! `pthread_setspecific` on a key below 32, which writes the thread's descriptor and
//! allocates nothing. A thread that finds no free entry in its run has no state: its hits
//! run no handler and count as missed.
//!
//! A signal handler nested in a claim is the only other user of the thread's entries, and it
//! runs to its end before the claim goes on: a claim that finds, after its compare-and-swap,
//! an entry of its thread earlier in the run (taken by a nested hit) gives its own back
//! untouched, so that every lookup of the thread finds the same entry.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::OnceLock;

use crate::exits::ExitStack;
use crate::kretprobe::ThreadReturns;
use crate::stack_mappings::KnownStacks;
use crate::sys;

/// Entries: threads that reached dprobe's code and are alive at once.
const ENTRIES: usize = 4096;
/// How far from where its pointer hashes a thread looks for its entry.
const RUN: usize = 64;
/// Keys from this one on make `pthread_setspecific` allocate (glibc's second-level blocks).
const INLINE_KEYS: libc::pthread_key_t = 32;

/// One thread's state. Every field's zero bytes are its initial value.
pub(crate) struct ThreadState {
    tid: Cell<u32>,
    /// Running probe handlers (a hit then runs none and counts as missed, kprobe rule 6).
    pub(crate) in_handler: Cell<bool>,
    /// Depth of dprobe's signal handlers and jump-path dispatches.
    pub(crate) in_hit_path: Cell<u32>,
    /// The jump path's read section (see `jump.rs`): how deeply the thread is inside it in
    /// the low 32 bits, which outermost section in the high ones; read by other threads
    /// waiting for a grace period.
    pub(crate) jump_reading: AtomicU64,
    /// Depth of dprobe's own work (registering, unregistering): its hits count nothing.
    pub(crate) own_work: Cell<u32>,
    /// The thread's stack pointer when it entered dprobe's hit path or own work from outside
    /// both: a nested hit with a program's signal frame between it and here is the program's
    /// (see `interrupted.rs`).
    pub(crate) quiet_sp: Cell<u64>,
    /// Depth of a tool's own work in its handlers (`tool_work`, the agent's): a nested hit
    /// there is dprobe's unless a program's signal frame is found (see `interrupted.rs`).
    pub(crate) tool_work: Cell<u32>,
    /// The signal frames of dprobe's own handlers running on this thread, innermost last
    /// (the first `own_frames_len`): frames on its stack that are not the program's.
    pub(crate) own_frames: [Cell<u64>; 4],
    pub(crate) own_frames_len: Cell<u32>,
    /// Depth of handler bodies running (the closures, inside the fault guard): a hit there is
    /// the handler's own call and counts as missed; a hit elsewhere in the hit path is
    /// dprobe's machinery (a probed `memset` it calls) and counts nothing.
    pub(crate) handler_body: Cell<u32>,
    /// The thread's `errno` location (0 until asked), and, inside a handler call, the value
    /// the program's `errno` gets back when it returns (`program_errno.rs`).
    pub(crate) errno_at: Cell<u64>,
    pub(crate) program_errno: Cell<i32>,
    /// The alternate signal stack `(base, size)` at the current hit, when `alternate_known`.
    pub(crate) alternate_known: Cell<bool>,
    pub(crate) alternate: Cell<(u64, u64)>,
    /// The program's alternate stack `(base, size)` while the hit path runs on dprobe's
    /// (`hit_stack.rs`), which the kernel then reports as the thread's.
    pub(crate) program_alternate: Cell<(u64, u64)>,
    /// The program's alternate stack `(base, size)` as last seen (size 0: none), and how many
    /// more hits without a trap may trust it before the kernel is asked again
    /// (`hit_stack::off_alternate_stack`); one cell, read together on every such hit.
    pub(crate) alternate_seen: Cell<(u64, u64, u32)>,
    /// The program's alternate stack `(base, size)` last seen armed with `SS_AUTODISARM`
    /// (size 0: none): while a handler runs there, the kernel reports no alternate stack at
    /// all (`hit_stack.rs`).
    pub(crate) autodisarm_seen: Cell<(u64, u64)>,
    /// Copies of the signal sets and actions the program passed to `pthread_sigmask` and
    /// `sigaction`, with `SIGTRAP` taken out, which the functions read instead
    /// (`mask_guard.rs`, `handler_masks.rs`); used in turn (`next_signal_copy`).
    signal_copies: [Cell<[u64; SIGNAL_COPY_WORDS]>; 16],
    signal_next: Cell<u32>,
    /// Whether dprobe holds the program's asynchronous signals back on this thread (its code
    /// writer's guarded stores): no program handler can run on top of a guarded call then.
    pub(crate) signals_held: Cell<bool>,
    /// The recovery point of the guarded call running on this thread, or null.
    pub(crate) guard_point: Cell<*mut [u64; 2]>,
    /// The fault that resumed at the recovery point: `(signal, address)`, when `faulted`.
    pub(crate) faulted: Cell<bool>,
    pub(crate) fault: Cell<(i32, u64)>,
    /// Whether an emulated instruction raised a `SIGSEGV` and at which address, for the trap
    /// handler to deliver to the program once its own work is done (see `trap::on_sigtrap`).
    pub(crate) deferred_segv: Cell<(bool, u64)>,
    /// Pending returns of return probes.
    pub(crate) returns: ThreadReturns,
    /// The thread's name as last read, and when (monotonic nanoseconds; 0: never), for
    /// [`thread_name`].
    name: Cell<[u8; 16]>,
    name_read_at: Cell<u64>,
    /// The stack mappings the thread met last, for telling its stacks apart.
    pub(crate) stacks: KnownStacks,
    /// A child that shares the program's memory may be running on this state: the stack
    /// pointer at the entry of the function that lent it (0: not lent; `lent_threads.rs`).
    pub(crate) lent: Cell<u64>,
    /// Calls of `posix_spawn` and `posix_spawnp` the thread is in, as `spawn_hold.rs` let
    /// them in.
    pub(crate) spawns: Cell<u32>,
}

/// Words of a copy: the C library's `struct sigaction` (152 bytes), which holds a whole
/// `sigset_t` (128).
pub(crate) const SIGNAL_COPY_WORDS: usize = 19;

impl ThreadState {
    /// The thread's next copy of a signal set or action (`signal_copies`).
    pub(crate) fn next_signal_copy(&self) -> &Cell<[u64; SIGNAL_COPY_WORDS]> {
        let k = self.signal_next.get();
        self.signal_next.set(k.wrapping_add(1));
        &self.signal_copies[k as usize % self.signal_copies.len()]
    }

    /// Whether `addr` is one of the thread's copies: a set or an action another guard's
    /// handler made already.
    pub(crate) fn is_signal_copy(&self, addr: u64) -> bool {
        self.signal_copies.iter().any(|copy| copy.as_ptr() as u64 == addr)
    }

    /// The thread's word for counts added on its hit paths (`dprobe_core::HitCount`): the
    /// entry's address, which no other live thread has.
    pub(crate) fn count_word(&self) -> u64 {
        self as *const Self as u64
    }

    /// The thread's id: asked of the kernel once per entry's owner.
    pub(crate) fn tid(&self) -> u32 {
        if self.tid.get() == 0 {
            self.tid.set(crate::raw_calls::gettid() as u32);
        }
        self.tid.get()
    }

    /// Whether a signal frame at `at` is one of dprobe's own handlers' (`interrupted::OwnFrame`).
    pub(crate) fn own_frame_at(&self, at: u64) -> bool {
        let n = (self.own_frames_len.get() as usize).min(self.own_frames.len());
        self.own_frames[..n].iter().any(|f| f.get() == at)
    }
}

struct Table {
    /// Each entry's owner: a thread pointer, or 0 when free.
    owners: *const AtomicU64,
    states: *mut ThreadState,
    /// Each entry's calls pending in functions whose exits are watched, in a mapping of its
    /// own (large, and touched only as deep as a thread goes); none when it could not be made.
    exits: Option<*mut ExitStack>,
    /// The key whose destructor gives a thread's entry back (none: entries are kept).
    key: Option<libc::pthread_key_t>,
    /// Each entry's hit stack (`hit_stack.rs`): its lowest usable address, 0 until mapped.
    /// Kept when the entry is given back, for its next thread.
    hit_stacks: Option<*const AtomicU64>,
}

// SAFETY: owners are atomics; a state is only touched by the thread that owns its entry
// (and its nested signal handlers, which run to completion inside it).
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

static TABLE: OnceLock<Option<Table>> = OnceLock::new();

/// Make the table (once; not on the hit path). Without it every thread has no state.
pub(crate) fn init() {
    TABLE.get_or_init(|| {
        crate::lent_threads::note_program();
        let owners = map(ENTRIES * std::mem::size_of::<AtomicU64>())?;
        let states = map(ENTRIES * std::mem::size_of::<ThreadState>())?;
        let exits = map(ENTRIES * std::mem::size_of::<ExitStack>()).map(|p| p.cast());
        let hit_stacks = map(ENTRIES * std::mem::size_of::<AtomicU64>()).map(|p| p.cast_const().cast());
        let mut key = 0;
        // SAFETY: creates a key with a C-ABI destructor; `key` is ours.
        let made = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
        // SAFETY: registers a C-ABI function that runs in the child, single-threaded.
        unsafe { libc::pthread_atfork(None, None, Some(in_forked_child)) };
        crate::count_key::prepare();
        Some(Table {
            owners: owners.cast(),
            states: states.cast(),
            exits,
            key: (made && key < INLINE_KEYS).then_some(key),
            hit_stacks,
        })
    });
}

/// Anonymous memory, zeroed; pages appear when first touched.
fn map(bytes: usize) -> Option<*mut u8> {
    // SAFETY: a new private anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

impl Table {
    fn owner(&self, i: usize) -> &AtomicU64 {
        // SAFETY: i < ENTRIES (callers mask it): inside the mapping, aligned.
        unsafe { &*self.owners.add(i) }
    }

    fn state(&self, i: usize) -> &'static ThreadState {
        // SAFETY: i < ENTRIES; the table lives as long as the process (never unmapped), and
        // the caller owns entry i.
        unsafe { &*self.states.add(i) }
    }

    fn exit_stack(&self, i: usize) -> Option<&'static ExitStack> {
        // SAFETY: i < ENTRIES; the mapping lives as long as the process, and only the owner of
        // entry i (and its nested signal handlers) touches its exit stack.
        self.exits.map(|e| unsafe { &*e.add(i) })
    }

    /// Zero entry `i` and free it. Its owner calls this, outside any of its hits.
    fn release(&self, i: usize) {
        crate::kretprobe::thread_gone(&self.state(i).returns);
        // SAFETY: entry i is the caller's: nobody else reads or writes its state.
        unsafe { std::ptr::write_bytes(self.states.add(i), 0, 1) };
        if let Some(stack) = self.exit_stack(i).filter(|s| s.used()) {
            crate::exits::thread_gone(stack);
            // Give the pages it touched back (they read as zeroes again).
            let size = std::mem::size_of::<ExitStack>();
            let start = stack as *const ExitStack as usize;
            let (first, end) = ((start + 4095) & !4095, (start + size) & !4095);
            if end > first {
                // SAFETY: whole pages inside entry i's exit stack, which nobody else uses.
                unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
            }
        }
        self.owner(i).store(0, Release);
    }
}

/// The word holding the hit stack of `state`'s entry (`hit_stack.rs`), if the table has them.
pub(crate) fn hit_stack_word(state: &ThreadState) -> Option<&'static AtomicU64> {
    let table = TABLE.get()?.as_ref()?;
    let i =
        (state as *const ThreadState as usize).wrapping_sub(table.states as usize) / std::mem::size_of::<ThreadState>();
    // SAFETY: `state` is an entry of the table, so i < ENTRIES: inside the mapping, which
    // lives as long as the process.
    table.hit_stacks.filter(|_| i < ENTRIES).map(|words| unsafe { &*words.add(i) })
}

/// Whether any entry's hit stack mapping (its start, 0 until mapped) satisfies `f`.
pub(crate) fn any_hit_stack(mut f: impl FnMut(u64) -> bool) -> bool {
    let Some(words) = TABLE.get().and_then(Option::as_ref).and_then(|t| t.hit_stacks) else { return false };
    // SAFETY: the words are ENTRIES atomics in a mapping that lives as long as the process.
    (0..ENTRIES).any(|i| unsafe { f((*words.add(i)).load(Acquire)) })
}

/// The calling thread's pointer (`%fs:0` holds it, per the x86-64 TLS ABI).
fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reads one word at %fs:0, which the ABI guarantees is mapped and is the thread
    // pointer itself.
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

fn run_start(tp: u64) -> usize {
    ((tp >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize
}

fn slot(start: usize, k: usize) -> usize {
    (start + k) & (ENTRIES - 1)
}

/// The calling thread's entry if it has one. Async-signal-safe: loads only.
pub(crate) fn existing() -> Option<&'static ThreadState> {
    let table = TABLE.get()?.as_ref()?;
    existing_index().map(|i| table.state(i))
}

/// The index of the calling thread's entry if it has one. Async-signal-safe: loads only.
pub(crate) fn existing_index() -> Option<usize> {
    let table = TABLE.get()?.as_ref()?;
    let tp = thread_pointer();
    let start = run_start(tp);
    (0..RUN).map(|k| slot(start, k)).find(|&i| table.owner(i).load(Acquire) == tp)
}

/// The calling thread's entry, claimed if it has none; `None` when no entry is free near its
/// place (or the table could not be made). Async-signal-safe: atomics, and one
/// `pthread_setspecific` on a key below 32 at a claim.
pub(crate) fn current() -> Option<&'static ThreadState> {
    let table = TABLE.get()?.as_ref()?;
    let tp = thread_pointer();
    let start = run_start(tp);
    // The thread's entry other than `except`, wherever it is in the run.
    let entry = |except: Option<usize>| {
        (0..RUN).map(|k| slot(start, k)).find(|&i| Some(i) != except && table.owner(i).load(Acquire) == tp)
    };
    'scan: loop {
        // An entry freed before the thread's (a thread that exited) must not be claimed as a
        // second one, which would leave the first with the thread's pending returns and marks.
        if let Some(i) = entry(None) {
            return Some(table.state(i));
        }
        for k in 0..RUN {
            let i = slot(start, k);
            if table.owner(i).load(Acquire) != 0 {
                continue;
            }
            if table.owner(i).compare_exchange(0, tp, Acquire, Relaxed).is_err() {
                continue 'scan;
            }
            // A hit nested in this claim may have taken an entry (one freed meanwhile by an
            // exiting thread): that one is the thread's, this one goes back.
            if let Some(j) = entry(Some(i)) {
                table.owner(i).store(0, Release);
                return Some(table.state(j));
            }
            let state = table.state(i);
            if let Some(key) = table.key {
                // dprobe's call, not the program's: a probe on `pthread_setspecific` (which a
                // hit there finds this entry already claimed for) counts nothing for it.
                state.own_work.set(state.own_work.get() + 1);
                // SAFETY: a key below 32 is stored in the thread's descriptor: no allocation.
                unsafe { libc::pthread_setspecific(key, (i + 1) as *const libc::c_void) };
                state.own_work.set(state.own_work.get() - 1);
            }
            return Some(state);
        }
        return None;
    }
}

/// The exit stack of a thread's entry (`None` when the exit stacks could not be mapped).
pub(crate) fn exit_stack(state: &'static ThreadState) -> Option<&'static ExitStack> {
    let table = TABLE.get()?.as_ref()?;
    let i = (state as *const ThreadState as usize - table.states as usize) / std::mem::size_of::<ThreadState>();
    table.exit_stack(i)
}

/// Whether threads have exit stacks (their table could be mapped).
pub(crate) fn exit_stacks_mapped() -> bool {
    TABLE.get().and_then(Option::as_ref).is_some_and(|t| t.exits.is_some())
}

/// Run `f` on the entry of every thread that has one.
pub(crate) fn for_each(mut f: impl FnMut(&ThreadState)) {
    let Some(table) = TABLE.get().and_then(Option::as_ref) else { return };
    for i in 0..ENTRIES {
        if table.owner(i).load(Acquire) != 0 {
            f(table.state(i));
        }
    }
}

/// The key's destructor: the thread exits, its entry is free again.
extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let Some(table) = TABLE.get().and_then(Option::as_ref) else { return };
    let i = (value as usize).wrapping_sub(1);
    if i < ENTRIES && table.owner(i).load(Acquire) == thread_pointer() {
        table.release(i);
    }
}

/// In a forked child: the other threads' entries are free (those threads are not in the
/// child), and this thread's id is asked again; the readers of the engine's tables that were
/// those threads are forgotten (so that unregistering in the child does not wait for them).
extern "C" fn in_forked_child() {
    if let Some(engine) = crate::engine::Engine::get() {
        engine.forget_readers_after_fork();
    }
    crate::kretprobe::forget_readers_after_fork();
    crate::exits::forget_readers_after_fork();
    crate::lent_threads::note_program();
    crate::spawn_hold::forget_after_fork();
    let Some(table) = TABLE.get().and_then(Option::as_ref) else { return };
    let tp = thread_pointer();
    for i in 0..ENTRIES {
        match table.owner(i).load(Relaxed) {
            0 => {}
            owner if owner == tp => {
                table.state(i).tid.set(0);
                table.state(i).spawns.set(0);
            }
            _ => table.release(i),
        }
    }
}

/// How long a thread's name, once read, is taken as its name: the program may rename a
/// thread at any time (`prctl`, `pthread_setname_np`), and nothing tells dprobe.
const NAME_FRESH_NS: u64 = 1_000_000;

/// The calling thread's name (`comm`, NUL-padded), at `now_ns` on the monotonic clock: read
/// from the kernel at most once per millisecond per thread, a system call the hit path of a
/// probe that sends events would otherwise make at every hit. Async-signal-safe.
pub fn thread_name(now_ns: u64) -> [u8; 16] {
    let read = || {
        let mut name = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
        unsafe { sys::raw_syscall6(libc::SYS_prctl, [libc::PR_GET_NAME as u64, name.as_mut_ptr() as u64, 0, 0, 0, 0]) };
        name
    };
    let Some(state) = existing() else { return read() };
    let at = state.name_read_at.get();
    if at == 0 || now_ns.wrapping_sub(at) >= NAME_FRESH_NS {
        state.name.set(read());
        state.name_read_at.set(now_ns.max(1));
    }
    state.name.get()
}

/// The calling thread's id, asked of the kernel once per thread (and at each call in a child
/// that shares the program's memory, `lent_threads.rs`). Async-signal-safe.
pub fn thread_id() -> u32 {
    crate::lent_threads::ids(existing(), 0).1
}

/// The calling thread's process id and its own, at a hit with stack pointer `sp`: asked of the
/// kernel once per thread (and at each call in a child that shares the program's memory,
/// `lent_threads.rs`). Async-signal-safe.
pub fn process_and_thread_id(sp: u64) -> (u32, u32) {
    crate::lent_threads::ids(existing(), sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_entry_and_gives_it_back_when_it_exits() {
        init();
        let mine = current().expect("an entry") as *const ThreadState as usize;
        assert_eq!(existing().map(|s| s as *const ThreadState as usize), Some(mine), "found again");
        let (theirs, tid) = std::thread::spawn(|| {
            assert!(existing().is_none(), "a new thread has no entry until it needs one");
            let s = current().expect("an entry");
            s.own_work.set(3);
            (s as *const ThreadState as usize, s.tid())
        })
        .join()
        .unwrap();
        assert_ne!(theirs, mine);
        assert_ne!(tid, current().unwrap().tid());
        // The exited thread's entry is free and zeroed.
        // SAFETY: reads a state of the table (no thread owns it any more).
        let left = unsafe { &*(theirs as *const ThreadState) };
        assert_eq!((left.own_work.get(), left.tid.get()), (0, 0));
    }

    #[test]
    fn a_thread_keeps_its_entry_when_one_before_it_in_its_run_is_freed() {
        init();
        std::thread::spawn(|| {
            let table = TABLE.get().and_then(Option::as_ref).expect("the table");
            let tp = thread_pointer();
            let start = run_start(tp);
            // Another thread takes the first free slot of the run: the thread's entry comes
            // after it.
            let other = (0..RUN)
                .map(|k| slot(start, k))
                .find(|&i| table.owner(i).compare_exchange(0, 0x10, Acquire, Relaxed).is_ok())
                .expect("a free slot");
            let mine = current().expect("an entry") as *const ThreadState;
            // That thread exits: the slot before the thread's entry is free again.
            table.owner(other).store(0, Release);
            assert_eq!(current().map(|s| s as *const ThreadState), Some(mine), "the thread's entry moved");
            assert_eq!(existing().map(|s| s as *const ThreadState), Some(mine));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_s_name_and_id_are_the_kernel_s_and_a_new_name_is_seen_within_the_freshness() {
        init();
        std::thread::spawn(|| {
            let _ = current();
            let kernel_name = || std::fs::read_to_string("/proc/thread-self/comm").unwrap().trim_end().to_owned();
            let named =
                |n: [u8; 16]| String::from_utf8_lossy(&n[..n.iter().position(|b| *b == 0).unwrap_or(16)]).into_owned();
            let t0 = 10 * NAME_FRESH_NS;
            assert_eq!(named(thread_name(t0)), kernel_name());
            // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"renamed".as_ptr()) };
            assert_ne!(named(thread_name(t0 + 1)), "renamed", "read again only once the name is stale");
            assert_eq!(named(thread_name(t0 + NAME_FRESH_NS)), "renamed");
            // SAFETY: gettid has no preconditions.
            assert_eq!(thread_id(), unsafe { libc::gettid() } as u32);
        })
        .join()
        .unwrap();
    }
}
