//! Turning an armed `int3` probe into a jump to its detour, and back.
//!
//! # The protocol
//!
//! The kernel's `text_poke_bp` order, with every thread made to serialize
//! (`membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`) after each step. A registration that places
//! many probes takes each step for all of its sites before serializing once, as the kernel's
//! batched `text_poke_bp_batch` does: one `membarrier` per step, not per write.
//!
//! * **optimize** (the site is armed: byte 0 is `int3`, its row in the table):
//!   1. write the detour (fresh memory, not yet reachable);
//!   2. write bytes +1..+4 with the jump's displacement. A thread fetching at the probe still
//!      meets the `int3` first and takes the trap path, which never executes bytes +1..+4
//!      (its slot runs the whole displaced instruction and jumps back after it);
//!   3. write byte 0 as `e9`: from now on a hit jumps to the detour.
//! * **unoptimize** reverses it: byte 0 back to `int3` (hits trap again), then the original
//!   bytes +1..+4.
//!
//! **In one store** (`code_writes/one_store.rs`: an `int3` kills a thread that blocks every
//! signal, as the C library's own code does with a raw system call). A site whose window is one
//! instruction with its five bytes in one aligned word ([`in_one_store`]) is never armed on
//! `int3` to become a jump: its original bytes become the jump in one atomic store. Any entry
//! window's jump whose five bytes are in one aligned word ([`off_in_one_store`]) comes off in
//! one store, back to its original bytes, when its last enabled probe goes. A site the store
//! is refused for (its page not held writable, say) takes the steps above.
//!
//! A thread must never resume *strictly inside* the five bytes while they change, nor once
//! the jump is there. When the window is **one instruction**, byte 0 is the only instruction
//! boundary in it, where a thread sees either the `int3` or the jump, both correct. When it is
//! **several**, the registrar first makes the trap path send hits to the detour's copy (the
//! engine's route, published before step 2), then runs a safepoint (`safepoint.rs`): every
//! thread stopped inside the window, or inside the site's slot (whose jump back lands in the
//! window), is moved to the equivalent place in the detour's copy. Only then are bytes
//! +1..+4 written. If a thread cannot be shown to be out, nothing is written and the site
//! stays on `int3`, with the reason.
//!
//! An **exit window** (a return probe's `ret` or tail jump, `dprobe_arch::can_optimize_exit`)
//! starts before its probe: the jump goes where the instructions leading to the exit start,
//! which no probe has armed. Its first byte is made an `int3` first, and every thread
//! serialized, before the safepoint (so that no thread can enter the window after the
//! safepoint moved it out), then the steps above follow; unoptimizing ends by writing its
//! original byte back. A trap on that `int3` is no probe's hit (the exit's handlers belong to
//! the exit): the trap path sends the thread to the detour's copy of the instructions before
//! the exit, which reach the exit's handlers only if the exit is reached (`Engine::window_start`).
//! The probe's own `int3` on the exit stays armed under the jump's bytes: bytes +1..+4 are
//! restored to the armed bytes, never to the original `ret`.
//!
//! A thread may still be inside a detour after its probe was unoptimized (preempted there, or
//! running a handler). A site keeps its detour while it has probes. Once it has none, the
//! detour is retired: the site takes it back as it is if it is probed again, and its memory
//! is given to another site's detour only after a safepoint (`Engine::reclaim_detours`)
//! found every other thread with its program counter outside every retired detour and no
//! address inside one on its stack (a hit in progress returns into its detour; a signal
//! frame saves the place it interrupted). Until then no thread can find other code under its
//! instruction pointer.

use std::sync::Arc;

use dprobe_arch::{post_fits, window_head, Addr, Detour, Insn, NotOptimized, INT3, JUMP_LEN};
use dprobe_core::{ProbeEntry, ProbeError};

use crate::code_writes::{self, Change};
use crate::sys;

/// Whether the jump of a site can go in, and come off, in one store, with no `int3` in
/// between (`code_writes::apply_in_one_store`): an entry window of one instruction (byte 0 its
/// only boundary), its five bytes in one aligned word.
pub(crate) fn in_one_store((window, detour): Jump<'_>) -> bool {
    window.len() == 1 && !is_exit(detour) && code_writes::fits_one_store(window[0].addr, JUMP_LEN)
}

/// The change of a site's five bytes from its original instruction to the jump.
fn whole(window: &[Insn], detour: &Detour) -> Change {
    Change::new(window[0].addr, &window_head(window), &detour.jump())
}

/// Replace the original first bytes of each site of `jumps` (not armed, each
/// [`in_one_store`]) with its jump, each in one store, then serialize every thread once.
/// Each site's outcome; a site refused is left as it was.
pub(crate) fn place_in_one_store(jumps: &[Jump<'_>]) -> Vec<Result<(), ProbeError>> {
    if jumps.is_empty() {
        return Vec::new();
    }
    // The detours were written since every thread was last serialized (the protocol's steps
    // serialize twice between a detour's writing and its jump's first byte).
    sys::sync_cores();
    let changes: Vec<Change> = jumps.iter().map(|(w, d)| whole(w, d)).collect();
    let results = code_writes::apply_in_one_store(&changes);
    sys::sync_cores();
    results
}

/// Whether the jump of a site can come off in one store: an entry window, of any number of
/// instructions (no thread is ever inside the jump's five bytes: it is at the jump, past it in
/// the detour, or back after the window), its five bytes in one aligned word.
pub(crate) fn off_in_one_store((window, detour): Jump<'_>) -> bool {
    !is_exit(detour) && code_writes::fits_one_store(window[0].addr, JUMP_LEN)
}

/// Put the original first bytes of each site of `jumps` (each [`off_in_one_store`], and left
/// with no enabled probe) back over its jump, each in one store, then serialize every thread
/// once: the site is neither a jump nor armed any more. Each site's outcome; a site refused is
/// left as it was. (A site that keeps an enabled probe goes back to its `int3` in the
/// protocol's steps: a thread that blocks every signal would meet that `int3` anyway.)
pub(crate) fn remove_in_one_store(jumps: &[Jump<'_>]) -> Vec<Result<(), ProbeError>> {
    if jumps.is_empty() {
        return Vec::new();
    }
    let changes: Vec<Change> = jumps.iter().map(|(w, d)| whole(w, d).undo()).collect();
    let results = code_writes::apply_in_one_store(&changes);
    sys::sync_cores();
    results
}

/// Whether the probes `probes` at a site whose window analysis gave `window` should be a jump.
pub(crate) fn wanted(
    addr: Addr,
    window: &Result<Vec<Insn>, NotOptimized>,
    probes: &[Arc<ProbeEntry>],
) -> Result<(), NotOptimized> {
    let insns = window.as_ref().map_err(Clone::clone)?;
    if !probes.iter().any(|p| p.stats.is_enabled()) {
        return Err(NotOptimized::Disarmed);
    }
    if probes.iter().any(|p| !p.optimize) {
        return Err(NotOptimized::Disabled);
    }
    if probes.iter().any(|p| p.has_post()) {
        // An exit window's probe is its last instruction, a return or jump: a post-handler
        // after it needs the trap path's second trap.
        if insns.first().is_some_and(|i| i.addr != addr) {
            return Err(NotOptimized::PostHandler);
        }
        post_fits(insns)?;
    }
    Ok(())
}

/// Whether a detour is an exit window's (its jump starts before its probe).
pub(crate) fn is_exit(detour: &Detour) -> bool {
    detour.jump_from != detour.site
}

/// The change of byte 0 of an exit window, from its original byte to the `int3` that keeps
/// threads out while the rest changes (see the module's protocol).
fn start(window: &[Insn]) -> Change {
    Change::new(window[0].addr, &window_head(window)[..1], &[INT3])
}

/// Put the `int3` at the start of each exit window of `jumps` (`arm`), or the original byte
/// back, then serialize every thread once. Each site's outcome (`Ok` for entry windows).
pub(crate) fn set_window_starts(jumps: &[Jump<'_>], arm: bool) -> Vec<Result<(), ProbeError>> {
    let exits: Vec<usize> = (0..jumps.len()).filter(|&i| is_exit(jumps[i].1)).collect();
    let mut results: Vec<Result<(), ProbeError>> = jumps.iter().map(|_| Ok(())).collect();
    if exits.is_empty() {
        return results;
    }
    let changes: Vec<Change> =
        exits.iter().map(|&i| if arm { start(jumps[i].0) } else { start(jumps[i].0).undo() }).collect();
    for (&i, outcome) in exits.iter().zip(code_writes::apply(&changes)) {
        results[i] = outcome;
    }
    sys::sync_cores();
    results
}

/// A site's window and its detour (already written).
pub(crate) type Jump<'a> = (&'a [Insn], &'a Detour);

/// The change of bytes +1..+4 of a site, from the window's bytes as armed (the original ones,
/// but for an exit's `int3` among them) to the jump's.
fn tail(window: &[Insn], detour: &Detour) -> Change {
    let mut armed = window_head(window);
    let exit = detour.site.0.wrapping_sub(detour.jump_from.0) as usize;
    if let Some(byte) = armed.get_mut(exit).filter(|_| exit > 0) {
        *byte = INT3;
    }
    Change::new(window[0].addr.offset(1), &armed[1..], &detour.jump()[1..])
}

/// The change of byte 0 of a site, from the armed `int3` to the jump's `e9`.
fn head(window: &[Insn], detour: &Detour) -> Change {
    Change::new(window[0].addr, &[INT3], &detour.jump()[..1])
}

/// Replace the armed `int3` at the start of each window with the jump to its detour (no
/// thread inside the windows: see the module's protocol). Each step is done for every site,
/// then every thread is serialized once: bytes +1..+4 of all, then byte 0 of all. Each
/// site's outcome; a site that failed is left a plain `int3` probe.
pub(crate) fn optimize_all(jumps: &[Jump<'_>]) -> Vec<Result<(), ProbeError>> {
    if jumps.is_empty() {
        return Vec::new();
    }
    let tails: Vec<Change> = jumps.iter().map(|(w, d)| tail(w, d)).collect();
    let mut results = code_writes::apply(&tails);
    sys::sync_cores();
    // Byte 0 of the sites whose tail is in place (one allocation for the step).
    let ready: Vec<usize> = (0..jumps.len()).filter(|i| results[*i].is_ok()).collect();
    let heads: Vec<Change> = ready.iter().map(|&i| head(jumps[i].0, jumps[i].1)).collect();
    for (&i, outcome) in ready.iter().zip(code_writes::apply(&heads)) {
        if let Err(e) = outcome {
            // Put the original tail back: the site stays a plain int3 probe.
            let _ = code_writes::apply(&[tails[i].undo()]);
            results[i] = Err(e);
        }
    }
    sys::sync_cores();
    results
}

/// The change of byte 0 of a site from the jump's `e9` back to the armed `int3`, checked over
/// the whole jump (bytes +1..+4 written as they are): a jump the program wrote over dprobe's
/// (a hot patch) also starts with `e9`, and is the program's to keep.
fn unhead(window: &[Insn], detour: &Detour) -> Change {
    let jump = detour.jump();
    let mut armed = jump;
    armed[0] = INT3;
    Change::new(window[0].addr, &jump, &armed)
}

/// Turn the jumps at the start of the windows back into their `int3`s, then restore bytes
/// +1..+4, each step for every site followed by one serialization of every thread. Each
/// site's outcome: a site whose five bytes are not its jump any more is left as it is, with
/// the error of its check.
pub(crate) fn unoptimize_all(jumps: &[Jump<'_>]) -> Vec<Result<(), ProbeError>> {
    if jumps.is_empty() {
        return Vec::new();
    }
    // Both steps' changes are made before the first write: from then on the registrar's
    // allocations may trap on a probed allocator turned back into an `int3`.
    let heads: Vec<Change> = jumps.iter().map(|(w, d)| unhead(w, d)).collect();
    let tails: Vec<Change> = jumps.iter().map(|(w, d)| tail(w, d).undo()).collect();
    let mut ready: Vec<usize> = Vec::with_capacity(jumps.len());
    let mut todo: Vec<Change> = Vec::with_capacity(jumps.len());
    let mut results = code_writes::apply(&heads);
    sys::sync_cores();
    for (i, result) in results.iter().enumerate() {
        if result.is_ok() {
            ready.push(i);
            todo.push(tails[i]);
        }
    }
    for (&i, outcome) in ready.iter().zip(code_writes::apply(&todo)) {
        results[i] = outcome;
    }
    sys::sync_cores();
    // Exit windows: their first byte back from the `int3`.
    let restored: Vec<usize> = (0..jumps.len()).filter(|&i| results[i].is_ok()).collect();
    let starts: Vec<Jump<'_>> = restored.iter().map(|&i| jumps[i]).collect();
    for (&i, outcome) in restored.iter().zip(set_window_starts(&starts, false)) {
        results[i] = outcome;
    }
    results
}
