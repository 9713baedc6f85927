//! A jump placed over one instruction, or taken off it, in one store: no `int3` in between.
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
//! the jump, or the jump the original instruction, with nothing in between.
//!
//! # Why one store is enough
//!
//! An aligned 8-byte store is atomic (Intel SDM vol. 3A, "Guaranteed Atomic Operations"): a
//! fetch by another core sees the old word or the new, and sees the new once the store
//! reaches its cache, which the caches' snooping of stores into code brings about; every
//! thread is serialized after the step all the same (`membarrier`), as after the protocol's
//! steps. The SDM's cross-modifying-code procedure (keep the executing processor away while
//! the code changes) is what the `int3` protocol follows; one atomic, aligned store over a
//! single instruction is how live code is patched where a trap cannot be used: HotSpot patches
//! its call sites and method entries so, LLVM's XRay its sleds, and Linux's `text_poke`
//! allowed nothing else on live code before `text_poke_bp`.
//!
//! A change that does not fit one word, or whose page dprobe does not hold writable (a store
//! through `/proc/self/mem` is a copy of no promised width), is refused here: the caller takes
//! the protocol's steps instead.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::{in_held_pages, stores_guarded, Change};
use crate::{code_pages, guard, sys, thread_state};
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
    changes
        .iter()
        .map(|c| {
            if !fits_one_store(c.addr, c.len as usize) {
                return Err(refused(c, "its bytes are not in one aligned word".into()));
            }
            if !guarded || !in_held_pages(&held, c) {
                return Err(refused(c, "its page is not one dprobe holds writable".into()));
            }
            store(c)
        })
        .collect()
}

fn refused(change: &Change, why: String) -> ProbeError {
    ProbeError::Patch { addr: change.addr, reason: format!("not one store: {why}") }
}

/// What [`store`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The store faulted (the page was made read-only again, or unmapped).
    Faulted,
    /// The word, which did not hold the change's old bytes.
    Changed(u64),
    Stored,
}

/// Make `change` (checked to fit one word in a page held writable) with one `cmpxchg`.
fn store(change: &Change) -> Result<(), ProbeError> {
    let word_at = change.addr.0 - change.addr.0 % WORD;
    let (shift, len) = ((change.addr.0 - word_at) as usize, change.len as usize);
    let mut outcome = Outcome::Faulted;
    let result: *mut Outcome = &mut outcome;
    // The program's asynchronous signals wait, as for the other stores (`store_pieces`): a
    // fault in a handler of the program run in between would be taken for this store's.
    let mask = sys::block_asynchronous_signals();
    let state = thread_state::current();
    let held = state.map(|s| s.signals_held.replace(true));
    let _ = guard::call_guarded_in(state, || {
        // SAFETY: `word_at` is 8-aligned and in a page of code mapped and held writable by
        // dprobe (checked by the caller); an access it does not take raises a fault, which the
        // guard turns into a return here. Only the change's bytes differ in what is stored,
        // and only if the word still holds what was read.
        let word = unsafe { AtomicU64::from_ptr(word_at as *mut u64) };
        let now = word.load(SeqCst);
        let mut bytes = now.to_le_bytes();
        let found = if bytes[shift..shift + len] != *change.old() {
            Outcome::Changed(now)
        } else {
            bytes[shift..shift + len].copy_from_slice(change.new_bytes());
            match word.compare_exchange(now, u64::from_le_bytes(bytes), SeqCst, SeqCst) {
                Ok(_) => Outcome::Stored,
                Err(other) => Outcome::Changed(other),
            }
        };
        // SAFETY: `result` points to `outcome`, alive for the call; volatile so that it is in
        // memory when the guarded call returns.
        unsafe { result.write_volatile(found) };
    });
    if let (Some(s), Some(held)) = (state, held) {
        s.signals_held.set(held);
    }
    sys::set_signal_mask(mask);
    // SAFETY: as above; read after the guarded call returned, either way.
    match unsafe { result.read_volatile() } {
        Outcome::Stored => Ok(()),
        Outcome::Faulted => Err(refused(change, "the store faulted (the page is not writable any more)".into())),
        Outcome::Changed(word) => {
            let now = &word.to_le_bytes()[shift..shift + len];
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
