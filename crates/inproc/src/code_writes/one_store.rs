//! A jump placed over one instruction, or taken off a window, in one store: no `int3` in
//! between.
//!
//! The patching protocol (`optimizer.rs`) puts an `int3` on a site before its jump goes in
//! and again while it comes off. A thread that reaches that `int3` while it blocks `SIGTRAP`
//! is killed: the kernel forces the trap's signal, and a forced signal the thread blocks has
//! its action reset to the default. dprobe keeps `SIGTRAP` open in the masks a program sets
//! through the C library (`mask_guard.rs`), but the C library itself blocks every signal with
//! a raw system call around the `clone` of `pthread_create` and as a thread ends (around the
//! `madvise` of its stack): a thread-churning program attached with a probe on `madvise` was
//! killed in 1 attach of 30 to 1 of 7, at the moment the jump went in or came off.
//!
//! Where the jump's window is one instruction (byte 0 its only boundary: a thread is before
//! the instruction, at it, or past it, never inside) and its five bytes lie in one aligned
//! 8-byte word, the word is replaced with one `lock cmpxchg`: the original instruction becomes
//! the jump, or the jump the original instruction, with nothing in between. A jump over
//! several instructions comes off so too (no thread is ever inside a jump's five bytes: it is
//! at the jump, in the detour, or back after the window); it goes in over the protocol's
//! `int3`, which keeps threads out of the window while its safepoint moves the others out.
//!
//! # Why one store is enough
//!
//! An aligned 8-byte store is atomic (Intel SDM vol. 3A, "Guaranteed Atomic Operations"): a
//! fetch by another core sees the old word or the new, and sees the new once the store
//! reaches its cache, which the caches' snooping of stores into code brings about; every
//! thread is serialized after the step all the same (`membarrier`), as after the protocol's
//! steps. The SDM's cross-modifying-code procedure (keep the executing processor away while
//! the code changes) is what the `int3` protocol follows; one atomic, aligned store over a
//! single instruction is how live code is patched where no trap is wanted: HotSpot patches a
//! method's entry so (an 8-byte store of a jump over a first instruction of 5 bytes or more),
//! and LLVM's XRay its sleds.
//!
//! A change that does not fit one word, or whose page dprobe does not hold writable (a store
//! through `/proc/self/mem` is a copy of no promised width), is refused here: the caller takes
//! the protocol's steps instead.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::{holding_program_signals, in_held_pages, stores_guarded, Change};
use crate::{code_pages, guard, thread_state};
use dprobe_arch::Addr;
use dprobe_core::ProbeError;

/// The width of the store.
const WORD: u64 = 8;

/// Whether `len` bytes at `addr` lie in one aligned 8-byte word.
pub(crate) fn fits_one_store(addr: Addr, len: usize) -> bool {
    addr.0 % WORD + len as u64 <= WORD
}

/// Check, then make, each change of `changes` as one atomic store of the aligned word that
/// holds it (each outcome, in order): refused where it does not fit one word, where its page
/// is not one dprobe holds writable, or where the bytes it replaces are not there. Every
/// thread still has to be serialized afterwards (the caller does it once for the step).
pub(crate) fn apply_in_one_store(changes: &[Change]) -> Vec<Result<(), ProbeError>> {
    let held = code_pages::held_writable();
    let guarded = stores_guarded();
    let mut outcomes: Vec<Outcome> = changes
        .iter()
        .map(|c| match () {
            _ if !fits_one_store(c.addr, c.len as usize) => Outcome::NotOneWord,
            _ if !guarded => Outcome::Unguarded,
            _ if !in_held_pages(&held, c) => Outcome::NotHeld,
            _ => Outcome::Faulted,
        })
        .collect();
    store_all(changes, &mut outcomes);
    changes.iter().zip(outcomes).map(|(c, outcome)| outcome.result(c)).collect()
}

/// What became of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotOneWord,
    Unguarded,
    NotHeld,
    /// The store faulted (the page was made read-only again, or unmapped); before the store,
    /// a change to make.
    Faulted,
    /// The word, which did not hold the change's old bytes.
    Changed(u64),
    Stored,
}

impl Outcome {
    fn result(self, change: &Change) -> Result<(), ProbeError> {
        let refused = |why: &str| Err(ProbeError::Patch { addr: change.addr, reason: format!("not one store: {why}") });
        match self {
            Outcome::Stored => Ok(()),
            Outcome::NotOneWord => refused("its bytes are not in one aligned word"),
            Outcome::Unguarded => refused("this thread's stores into code cannot be guarded against a fault"),
            Outcome::NotHeld => refused("its page is not one dprobe holds writable"),
            Outcome::Faulted => refused("the store faulted (the page is not writable any more)"),
            Outcome::Changed(word) => {
                let shift = (change.addr.0 % WORD) as usize;
                let now = &word.to_le_bytes()[shift..shift + change.len as usize];
                Err(ProbeError::Patch {
                    addr: change.addr,
                    reason: format!(
                        "expected bytes {:02x?}, found {now:02x?}: the code changed under dprobe",
                        change.old()
                    ),
                })
            }
        }
    }
}

/// The aligned word that holds `change`, and the change's old bytes, new bytes and every byte
/// as they sit in that little-endian word.
fn in_word(change: &Change) -> (u64, u64, u64, u64) {
    let word_at = change.addr.0 - change.addr.0 % WORD;
    let shift = change.addr.0 - word_at;
    let place = |bytes: &[u8]| bytes.iter().zip(0..).fold(0u64, |w, (b, i)| w | u64::from(*b) << (8 * (shift + i)));
    let len = change.len as usize;
    (word_at, place(change.old()), place(change.new_bytes()), place(&[0xff; 8][..len]))
}

/// Make each change whose outcome is still [`Outcome::Faulted`] (one to make) with one
/// `cmpxchg`, under one fault guard for all of them (a system call or two each would cost
/// more than the store: a batch places thousands of jumps); a change that faults ends the
/// guarded call, and the next one starts after it.
fn store_all(changes: &[Change], outcomes: &mut [Outcome]) {
    let out = outcomes.as_mut_ptr();
    holding_program_signals(|state| store_guarded(changes, out, state));
}

/// [`store_all`]'s stores, under the fault guard of `state` (the program's signals held back).
fn store_guarded(changes: &[Change], out: *mut Outcome, state: Option<&thread_state::ThreadState>) {
    let n = changes.len();
    let mut from = 0;
    while from < n {
        let mut at = from;
        let progress: *mut usize = &mut at;
        let _ = guard::call_guarded_in(state, || {
            for (i, change) in changes.iter().enumerate().skip(from) {
                // SAFETY: `progress` points to `at`, alive for the call; volatile, so that it
                // is in memory, in order, when a fault abandons the loop.
                unsafe { progress.write_volatile(i) };
                // SAFETY: `i < n`, in `outcomes`, which outlives the call.
                if unsafe { out.add(i).read_volatile() } != Outcome::Faulted {
                    continue;
                }
                let (word_at, old, new, bytes) = in_word(change);
                // SAFETY: `word_at` is 8-aligned and in a page of code mapped and held
                // writable by dprobe (checked before); an access it does not take raises a
                // fault, which the guard turns into a return here. Only the change's bytes
                // differ in what is stored, and only if the word still holds what was read.
                // Masks and shifts, no slice compared or copied: no call (a probed `memcmp`).
                let word = unsafe { AtomicU64::from_ptr(word_at as *mut u64) };
                let now = word.load(SeqCst);
                let found = if now & bytes != old {
                    Outcome::Changed(now)
                } else {
                    match word.compare_exchange(now, now & !bytes | new, SeqCst, SeqCst) {
                        Ok(_) => Outcome::Stored,
                        Err(other) => Outcome::Changed(other),
                    }
                };
                // SAFETY: as above.
                unsafe { out.add(i).write_volatile(found) };
            }
            // SAFETY: as above.
            unsafe { progress.write_volatile(n) };
        });
        // SAFETY: as above; read after the guarded call returned, either way. The change it
        // stopped at (if any) keeps its outcome: it faulted.
        from = unsafe { progress.read_volatile() } + 1;
    }
}
