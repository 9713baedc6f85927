//! The code writes of one patching step, checked and applied with few system calls.
//!
//! A step of the patching protocol (arm, disarm, every jump's bytes +1..+4, every byte 0)
//! changes a few bytes at each of up to thousands of sites. Each change is checked first:
//! the bytes it replaces must be there, or something else changed the code under dprobe and
//! that site is left alone. The checks of a step are read together: the
//! changes within a few KiB of each other as one range, up to [`sys::MAX_RANGES`] ranges per
//! `process_vm_readv`. The writes to pages dprobe holds writable (those under jumps and about
//! to be, `code_pages.rs`) are plain stores under the fault guard (or, where the guard cannot
//! be relied on, up to 256 per `process_vm_writev`); the others go through `/proc/self/mem`
//! (the one way to write through the code's page protections), one system call per run of
//! adjacent changes: a store there would fault every time.
//!
//! New slots and detours, which no thread can reach yet, go through `/proc/self/mem` too: one
//! system call per run of them that follow each other in dprobe's pages ([`write_fresh`]).
//!
//! Nothing here allocates per change: the registrar takes a step while the C library's
//! allocator may itself be probed, on `int3`, where every allocation would trap.

use dprobe_arch::{Addr, Patch};
use dprobe_core::ProbeError;

use crate::{code_pages, guard, signals, sys, thread_state, trap};

mod one_store;
pub(crate) use one_store::{apply_in_one_store, fits_one_store};

/// The longest change: the bytes of a `jmp rel32` after its first.
const MAX_CHANGE: usize = 8;

/// `new` replaces `old` at `addr` (both of `len` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    addr: Addr,
    len: u8,
    old: [u8; MAX_CHANGE],
    new: [u8; MAX_CHANGE],
}

impl Change {
    /// Replace `old` (what must be there) with `new` at `addr`.
    pub(crate) fn new(addr: Addr, old: &[u8], new: &[u8]) -> Change {
        assert!(old.len() == new.len() && old.len() <= MAX_CHANGE, "a change of at most {MAX_CHANGE} bytes");
        let mut change = Change { addr, len: old.len() as u8, old: [0; MAX_CHANGE], new: [0; MAX_CHANGE] };
        change.old[..old.len()].copy_from_slice(old);
        change.new[..new.len()].copy_from_slice(new);
        change
    }

    /// The change an engine-neutral patch makes.
    pub(crate) fn of(patch: &Patch) -> Change {
        Change::new(patch.addr, &patch.old, &patch.new)
    }

    /// The change that undoes this one.
    pub(crate) fn undo(&self) -> Change {
        Change { old: self.new, new: self.old, ..*self }
    }

    fn old(&self) -> &[u8] {
        &self.old[..self.len as usize]
    }

    fn new_bytes(&self) -> &[u8] {
        &self.new[..self.len as usize]
    }

    fn end(&self) -> Addr {
        self.addr.offset(self.len as u64)
    }
}

/// Check, then make, each change of `changes` (each outcome, in order). A change whose check
/// fails is not made; the others are. Every thread still has to be serialized afterwards
/// (the caller does it once for the step).
pub(crate) fn apply(changes: &[Change]) -> Vec<Result<(), ProbeError>> {
    let mut results: Vec<Result<(), ProbeError>> = Vec::with_capacity(changes.len());
    let mut found = vec![0u8; READ_BYTES];
    let mut spans = [Span::default(); sys::MAX_RANGES];
    let mut ranges = [(Addr(0), 0usize); sys::MAX_RANGES];
    let mut at = 0;
    while at < changes.len() {
        // The next spans, as many as one read takes.
        let (mut n, mut bytes, mut next) = (0, 0, at);
        while next < changes.len() && n < sys::MAX_RANGES {
            let span = Span::from(changes, next);
            if bytes + span.len() > READ_BYTES {
                break;
            }
            spans[n] = span;
            ranges[n] = (span.start, span.len());
            (n, bytes, next) = (n + 1, bytes + span.len(), span.last);
        }
        let read = sys::read_ranges(&ranges[..n], &mut found);
        let mut offset = 0;
        for span in &spans[..n] {
            if offset + span.len() <= read {
                let code = &found[offset..offset + span.len()];
                for c in &changes[span.first..span.last] {
                    let at = (c.addr.0 - span.start.0) as usize;
                    results.push(check(c, &code[at..at + c.len as usize]));
                }
            } else {
                // The read stopped in this span: its changes are read one by one, so that
                // each unreadable one says so; the next read starts after it.
                for c in &changes[span.first..span.last] {
                    let mut now = [0u8; MAX_CHANGE];
                    let now = &mut now[..c.len as usize];
                    let checked = sys::read_memory(c.addr, now)
                        .map_err(|e| ProbeError::Patch { addr: c.addr, reason: e.to_string() })
                        .and_then(|()| check(c, now));
                    results.push(checked);
                }
                next = span.last;
                break;
            }
            offset += span.len();
        }
        at = next;
    }
    write_runs(changes, &mut results);
    results
}

const PAGE: u64 = 4096;

/// The most bytes one read of a step's checks takes.
const READ_BYTES: usize = 64 << 10;

/// The most bytes one span reads: changes close together are read together (reading the
/// bytes between them costs less than one more range; only the changes are written).
const SPAN_BYTES: u64 = 4 << 10;

/// Bytes read at once for the checks of `changes` (a range of the step's changes, in
/// address order).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: Addr,
    end: Addr,
    /// Its changes: `first..last` of the step's.
    first: usize,
    last: usize,
}

impl Span {
    /// The span of the changes from `first` on that follow it within [`SPAN_BYTES`].
    fn from(changes: &[Change], first: usize) -> Span {
        let (start, mut end) = (changes[first].addr, changes[first].end());
        let mut last = first + 1;
        while let Some(c) = changes.get(last).filter(|c| c.addr >= start && c.end().0 - start.0 <= SPAN_BYTES) {
            end = end.max(c.end());
            last += 1;
        }
        Span { start, end, first, last }
    }

    fn len(&self) -> usize {
        (self.end.0 - self.start.0) as usize
    }
}

/// Whether `now` is what `change` replaces.
fn check(change: &Change, now: &[u8]) -> Result<(), ProbeError> {
    if now == change.old() {
        return Ok(());
    }
    Err(ProbeError::Patch {
        addr: change.addr,
        reason: format!("expected bytes {:02x?}, found {now:02x?}: the code changed under dprobe", change.old()),
    })
}

/// Write the checked changes: those in pages dprobe made writable and holds so (under jumps,
/// see `code_pages.rs`) with plain stores under the fault guard, or where it cannot be relied
/// on up to [`sys::MAX_PIECES`] per system call; the others (an `int3` armed in a page left
/// as the program had it, code that was writable already), and those of a held page that
/// refused (the program made it read-only again), through `/proc/self/mem`, one system call
/// per run of changes that follow each other in memory. A failed write becomes the outcome of
/// each change of its run.
fn write_runs(changes: &[Change], results: &mut [Result<(), ProbeError>]) {
    let mut held = code_pages::held_writable();
    let store = if stores_guarded() { store_pieces } else { sys::write_pieces };
    let mut i = 0;
    while i < changes.len() {
        i = write_while_writable(changes, results, i, &held, store);
        if let Some(refused) = changes.get(i).filter(|c| in_held_pages(&held, c)) {
            // The program made the page read-only again: no more stores there until dprobe
            // says again which pages it holds.
            let pages = [refused.addr.0 / PAGE * PAGE, (refused.end().0 - 1) / PAGE * PAGE];
            held.retain(|p| !pages.contains(p));
        }
        i = write_forced(changes, results, i, &held);
    }
}

/// Whether every byte of `change` is in a page of `held` (see [`code_pages::held_writable`]).
fn in_held_pages(held: &[u64], change: &Change) -> bool {
    code_pages::in_held_page(held, change.addr) && code_pages::in_held_page(held, Addr(change.end().0 - 1))
}

/// Writes pieces `(addr, bytes)` in order up to the first whose memory does not take them:
/// how many were written.
type WritePieces = fn(&[(Addr, &[u8])]) -> usize;

/// Whether this thread's writes can be plain stores under the fault guard: it has its state,
/// dprobe's handler still takes the faults (a program may have installed its own since), and
/// the thread does not block them (the kernel kills a process whose fault is blocked).
fn stores_guarded() -> bool {
    let faults = [libc::SIGSEGV, libc::SIGBUS];
    let blocked = sys::signal_mask();
    thread_state::current().is_some()
        && faults.iter().all(|sig| blocked & (1u64 << (sig - 1)) == 0)
        && faults.iter().all(|sig| signals::handler_in_place(*sig, trap::on_fault))
}

/// Write each piece `(addr, bytes)` of `pieces` (in pages dprobe holds writable), in order,
/// with plain stores under the fault guard (`guard.rs`): how many were written. The first
/// piece whose memory does not take the store (a page the program made read-only again)
/// faults, and the write ends there. A system call per piece costs about 1 µs, and a step
/// writes thousands of them.
fn store_pieces(pieces: &[(Addr, &[u8])]) -> usize {
    let mut done = 0usize;
    let progress: *mut usize = &mut done;
    holding_program_signals(|state| {
        let _ = guard::call_guarded_in(state, || {
            for (n, (addr, bytes)) in pieces.iter().enumerate() {
                for (k, byte) in bytes.iter().enumerate() {
                    // SAFETY: a store into code whose bytes were checked just before (the
                    // change replaces what is there); a page that does not take it raises a
                    // fault, which the guard turns into a return here. Byte by byte, in order,
                    // so that no call (a probed `memcpy`) runs inside, and a byte 0 is one store.
                    unsafe { (addr.0 as *mut u8).add(k).write_volatile(*byte) };
                }
                // SAFETY: `progress` points to `done`, alive for the call. Volatile, as the
                // stores are, so that it is in memory, in order, when a fault abandons the loop.
                unsafe { progress.write_volatile(n + 1) };
            }
        });
    });
    // SAFETY: as above; read after the guarded call returned, either way.
    unsafe { progress.read_volatile() }
}

/// Run `f` (given this thread's state, for the fault guard) with the program's asynchronous
/// signals held back until it returns: the fault of a program handler run in between would be
/// taken for one of the guarded stores, and the handler abandoned (the guard is this
/// thread's). The synchronous ones stay open (the kernel kills a thread whose fault is
/// blocked).
fn holding_program_signals(f: impl FnOnce(Option<&'static thread_state::ThreadState>)) {
    let mask = sys::block_asynchronous_signals();
    let state = thread_state::current();
    let held = state.map(|s| s.signals_held.replace(true));
    f(state);
    if let (Some(s), Some(held)) = (state, held) {
        s.signals_held.set(held);
    }
    sys::set_signal_mask(mask);
}

/// Write the checked changes from the `i`th on as pieces (with `store`), while they are in
/// the pages dprobe holds writable (`held`) and those take plain writes: the index of the
/// first change left to write. A write to `/proc/self/mem` costs several times more (the
/// kernel allocates a page and forces its way through the page's protection), and a step
/// writes thousands of them.
fn write_while_writable(
    changes: &[Change],
    results: &[Result<(), ProbeError>],
    mut i: usize,
    held: &[u64],
    store: WritePieces,
) -> usize {
    let mut pieces = [(Addr(0), &[][..]); sys::MAX_PIECES];
    let mut which = [0usize; sys::MAX_PIECES];
    loop {
        let mut n = 0;
        let mut j = i;
        while j < changes.len() && n < sys::MAX_PIECES && in_held_pages(held, &changes[j]) {
            if results[j].is_ok() {
                (pieces[n], which[n]) = ((changes[j].addr, changes[j].new_bytes()), j);
                n += 1;
            }
            j += 1;
        }
        if n == 0 {
            return j;
        }
        let written = store(&pieces[..n]);
        if written < n {
            return which[written];
        }
        i = j;
    }
}

/// Write the checked changes from the `i`th on through `/proc/self/mem`, up to the first in a
/// page dprobe holds writable (`held`) other than the `i`th's (which refused a plain write, or
/// is not held): the index of the first change left to write.
fn write_forced(changes: &[Change], results: &mut [Result<(), ProbeError>], mut i: usize, held: &[u64]) -> usize {
    const RUN: usize = 256;
    let mut run = [0u8; RUN];
    let page = |c: &Change| c.addr.0 / PAGE;
    let Some(refused) = changes.get(i).map(page) else { return i };
    while i < changes.len() && (page(&changes[i]) == refused || !in_held_pages(held, &changes[i])) {
        if results[i].is_err() {
            i += 1;
            continue;
        }
        let start = changes[i].addr;
        let mut len = 0;
        let mut j = i;
        while j < changes.len()
            && results[j].is_ok()
            && changes[j].addr == start.offset(len as u64)
            && len + changes[j].len as usize <= RUN
        {
            let bytes = changes[j].new_bytes();
            run[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
            j += 1;
        }
        if let Err(e) = sys::write_code_unsynced(start, &run[..len]) {
            for (c, result) in changes[i..j].iter().zip(&mut results[i..j]) {
                *result = Err(ProbeError::Patch { addr: c.addr, reason: e.to_string() });
            }
        }
        i = j;
    }
    i
}

/// New code for memory no thread can reach yet (a slot or a detour being built): `code` at
/// `addr`, in `room` bytes of its own (at least `code.len()`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fresh<'a> {
    pub(crate) addr: Addr,
    pub(crate) code: &'a [u8],
    pub(crate) room: usize,
}

/// Write each piece of fresh code, one system call per run of pieces whose rooms follow each
/// other (the rest of a room is filled with `int3`): each piece's outcome, in order. No
/// check: the memory is dprobe's own and nothing runs there yet.
pub(crate) fn write_fresh(pieces: &[Fresh<'_>]) -> Vec<std::io::Result<()>> {
    const RUN_BYTES: usize = 64 << 10;
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_unstable_by_key(|&i| pieces[i].addr);
    let mut results: Vec<std::io::Result<()>> = pieces.iter().map(|_| Ok(())).collect();
    let mut run: Vec<u8> = Vec::with_capacity(RUN_BYTES);
    let mut k = 0;
    while k < order.len() {
        let start = pieces[order[k]].addr;
        run.clear();
        let mut end = k;
        while let Some(p) = order.get(end).map(|&i| &pieces[i]) {
            let fits = run.len() + p.room <= RUN_BYTES || run.is_empty();
            if p.addr != start.offset(run.len() as u64) || !fits {
                break;
            }
            // The last piece of a run is written without its spare room.
            run.extend_from_slice(p.code);
            end += 1;
            if order.get(end).is_some_and(|&i| pieces[i].addr == p.addr.offset(p.room as u64)) {
                run.resize(run.len() + p.room - p.code.len(), dprobe_arch::INT3);
            }
        }
        if let Err(e) = sys::write_code_unsynced(start, &run) {
            for &i in &order[k..end] {
                results[i] = Err(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        k = end;
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new page with protection `prot`, every byte `0x90`.
    fn page(prot: libc::c_int) -> Addr {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a new anonymous mapping where the kernel chooses: no existing memory changes.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, rw, flags, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the page was just mapped readable and writable, and is this test's alone.
        unsafe {
            std::ptr::write_bytes(p.cast::<u8>(), 0x90, 4096);
            assert_eq!(libc::mprotect(p, 4096, prot), 0);
        }
        Addr(p as u64)
    }

    fn bytes(at: Addr, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        sys::read_memory(at, &mut buf).unwrap();
        buf
    }

    /// Changes in a writable page, more than one system call takes, then one in a code page
    /// that only `/proc/self/mem` can write, then writable ones again, and one whose check
    /// fails in between: each made (or refused) as asked, whichever way it was written.
    #[test]
    fn changes_in_writable_and_read_only_pages_are_each_made_in_order() {
        let writable = page(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
        let code = page(libc::PROT_READ | libc::PROT_EXEC);
        let mut changes: Vec<Change> =
            (0..300).map(|i| Change::new(writable.offset(i * 8), &[0x90], &[0xcc])).collect();
        changes.push(Change::new(code.offset(16), &[0x90; 5], &[0xe9, 1, 2, 3, 4]));
        changes.push(Change::new(writable.offset(2404), &[0x90, 0x90], &[0x0f, 0x0b]));
        changes.push(Change::new(writable.offset(2408), &[0xc3], &[0xcc]));
        changes.push(Change::new(code.offset(100), &[0x90], &[0xcc]));
        let results = apply(&changes);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), changes.len() - 1);
        match &results[302] {
            Err(ProbeError::Patch { addr, reason }) => {
                let expected = "expected bytes [c3], found [90]: the code changed under dprobe";
                assert_eq!((*addr, reason.as_str()), (writable.offset(2408), expected));
            }
            other => panic!("the change over bytes that are not there is refused, got {other:?}"),
        }
        let every_eighth: Vec<u8> = bytes(writable, 2400).iter().step_by(8).copied().collect();
        assert_eq!(every_eighth, [0xcc; 300]);
        assert!(bytes(writable, 2400).iter().enumerate().all(|(i, &b)| i % 8 == 0 || b == 0x90));
        assert_eq!(bytes(writable.offset(2400), 10), [0x90, 0x90, 0x90, 0x90, 0x0f, 0x0b, 0x90, 0x90, 0x90, 0x90]);
        assert_eq!(bytes(code.offset(15), 7), [0x90, 0xe9, 1, 2, 3, 4, 0x90]);
        assert_eq!(bytes(code.offset(99), 3), [0x90, 0xcc, 0x90]);
    }

    /// Plain stores under the fault guard: the store into the read-only page faults, the guard
    /// returns, and what came before it is written, nothing after.
    #[test]
    fn stores_are_made_up_to_the_first_whose_page_does_not_take_them() {
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            signals::install(sig, trap::on_fault).unwrap();
        }
        thread_state::init();
        assert!(stores_guarded());
        let writable = page(libc::PROT_READ | libc::PROT_WRITE);
        let code = page(libc::PROT_READ | libc::PROT_EXEC);
        let pieces =
            [(writable, &[1u8, 2][..]), (writable.offset(10), &[3]), (code, &[4]), (writable.offset(20), &[5])];
        assert_eq!(store_pieces(&pieces), 2);
        assert_eq!(bytes(writable, 3), [1, 2, 0x90]);
        assert_eq!(bytes(writable.offset(10), 1), [3]);
        assert_eq!(bytes(code, 1), [0x90]);
        assert_eq!(bytes(writable.offset(20), 1), [0x90]);
        // A whole step over pages held writable, one of which the program made read-only
        // again (its change goes through `/proc/self/mem`), and a page not held.
        let other = page(libc::PROT_READ | libc::PROT_EXEC);
        let _held = code_pages::HELD_BY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        code_pages::hold_for_test(&[writable.0, code.0]);
        let mut changes = vec![
            Change::new(writable.offset(30), &[0x90], &[0xcc]),
            Change::new(code.offset(8), &[0x90], &[0xcc]),
            Change::new(code.offset(9), &[0x90], &[0xcc]),
            Change::new(writable.offset(40), &[0x90; 4], &[1, 2, 3, 4]),
            Change::new(other.offset(50), &[0x90], &[0xcc]),
        ];
        changes.sort_by_key(|c| c.addr);
        let results = apply(&changes);
        code_pages::hold_for_test(&[]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(bytes(writable.offset(30), 1), [0xcc]);
        assert_eq!(bytes(code.offset(7), 4), [0x90, 0xcc, 0xcc, 0x90]);
        assert_eq!(bytes(writable.offset(40), 5), [1, 2, 3, 4, 0x90]);
        assert_eq!(bytes(other.offset(49), 3), [0x90, 0xcc, 0x90]);
    }

    static DELIVERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static DELIVERED_INSIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// A program's handler: counts its deliveries, and those that came while the thread was
    /// inside `store_pieces`'s guarded stores.
    extern "C" fn note_delivery(_: libc::c_int) {
        use std::sync::atomic::Ordering::Relaxed;
        if thread_state::existing().is_some_and(|s| s.signals_held.get()) {
            DELIVERED_INSIDE.fetch_add(1, Relaxed);
        }
        DELIVERED.fetch_add(1, Relaxed);
    }

    /// A program's signal sent to the thread while it stores waits until the stores are done
    /// (a handler run there would have its faults taken for the stores'), and is then
    /// delivered. Most of each call is spent storing: without the hold, most deliveries land
    /// inside.
    #[test]
    fn a_program_signal_sent_during_the_stores_waits_until_they_are_done() {
        use std::sync::atomic::Ordering::Relaxed;
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            signals::install(sig, trap::on_fault).unwrap();
        }
        thread_state::init();
        assert!(stores_guarded());
        let sig = libc::SIGRTMIN() + 6;
        // SAFETY: a handler that only reads this thread's state and counts.
        assert_ne!(unsafe { libc::signal(sig, note_delivery as *const () as libc::sighandler_t) }, libc::SIG_ERR);
        let writable = page(libc::PROT_READ | libc::PROT_WRITE);
        let pieces: Vec<(Addr, &[u8])> = (0..4096).map(|i| (writable.offset(i), &[0xcc][..])).collect();
        // A timer of this thread's sends it the signal every 20 µs.
        // SAFETY: gettid has no arguments.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        // SAFETY: all-zero is a valid sigevent, filled in below.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        (event.sigev_notify, event.sigev_signo, event.sigev_notify_thread_id) = (libc::SIGEV_THREAD_ID, sig, me);
        let mut timer: libc::timer_t = std::ptr::null_mut();
        let every = libc::timespec { tv_sec: 0, tv_nsec: 20_000 };
        let period = libc::itimerspec { it_interval: every, it_value: every };
        // SAFETY: creates and arms a timer of this process from `event`, written into `timer`.
        unsafe {
            assert_eq!(libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer), 0);
            assert_eq!(libc::timer_settime(timer, 0, &period, std::ptr::null_mut()), 0);
        }
        let started = std::time::Instant::now();
        while DELIVERED.load(Relaxed) < 200 && started.elapsed() < std::time::Duration::from_secs(20) {
            assert_eq!(store_pieces(&pieces), pieces.len());
        }
        // SAFETY: the timer made above, deleted once.
        assert_eq!(unsafe { libc::timer_delete(timer) }, 0);
        assert!(DELIVERED.load(Relaxed) > 0, "signals were delivered");
        assert_eq!(DELIVERED_INSIDE.load(Relaxed), 0, "deliveries inside the stores");
        assert_eq!(bytes(writable, 4096), vec![0xcc; 4096]);
    }

    static STORED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

    /// A `WritePieces` that writes nothing and notes where it was asked to.
    fn note_stores(pieces: &[(Addr, &[u8])]) -> usize {
        STORED.lock().unwrap().extend(pieces.iter().map(|(a, _)| a.0));
        pieces.len()
    }

    /// Only changes wholly in the pages dprobe holds are stored; the first that is not ends
    /// the stores there (a store anywhere else would fault every time).
    #[test]
    fn only_changes_in_held_pages_are_stored() {
        let held = [0x10_000, 0x30_000];
        let changes = [
            Change::new(Addr(0x10_010), &[0x90], &[0xcc]),
            Change::new(Addr(0x10_020), &[0x90; 4], &[1, 2, 3, 4]),
            Change::new(Addr(0x10_ffe), &[0x90; 4], &[1, 2, 3, 4]),
            Change::new(Addr(0x30_010), &[0x90], &[0xcc]),
            Change::new(Addr(0x40_010), &[0x90], &[0xcc]),
        ];
        let results: Vec<Result<(), ProbeError>> = changes.iter().map(|_| Ok(())).collect();
        assert_eq!(write_while_writable(&changes, &results, 0, &held, note_stores), 2, "across into a page not held");
        assert_eq!(write_while_writable(&changes, &results, 3, &held, note_stores), 4);
        assert_eq!(write_while_writable(&changes, &results, 4, &held, note_stores), 4, "nothing stored");
        assert_eq!(*STORED.lock().unwrap(), [0x10_010, 0x10_020, 0x30_010]);
    }

    #[test]
    fn pieces_are_written_up_to_the_first_whose_page_is_not_writable() {
        let writable = page(libc::PROT_READ | libc::PROT_WRITE);
        let code = page(libc::PROT_READ | libc::PROT_EXEC);
        let pieces =
            [(writable, &[1u8, 2][..]), (writable.offset(10), &[3]), (code, &[4]), (writable.offset(20), &[5])];
        assert_eq!(sys::write_pieces(&pieces), 2);
        assert_eq!(bytes(writable, 3), [1, 2, 0x90]);
        assert_eq!(bytes(writable.offset(10), 1), [3]);
        assert_eq!(bytes(code, 1), [0x90]);
        assert_eq!(bytes(writable.offset(20), 1), [0x90]);
    }
}
