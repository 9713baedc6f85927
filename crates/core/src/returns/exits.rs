//! Pairing without touching the stack: a return probe that watches a function's exit sites
//! (every `ret`, every tail call; `dprobe_arch::find_exits`) pairs each exit with its entry by
//! the stack pointer alone. At the entry instruction and at an exit instruction the stack
//! pointer points at the same word, the return address of the call, so an activation is the
//! stack pointer at its entry.
//!
//! A thread's activations are kept innermost last. The one rule, on the same stack:
//!
//! * at an exit with `sp`, the innermost activation at `sp` is leaving; activations below `sp`
//!   belong to frames the program abandoned (`longjmp`, an exception unwinding past them, a
//!   thread that switched frames away): stale, dropped and counted as abandoned;
//! * at an entry with `sp`, an activation on that very word is stale (a new call has
//!   written it), with every activation pushed after it and every one that had handed its
//!   return over to it by a tail call (right under it, on the same word), unless it had itself
//!   handed its return over (the entry is then its tail call's callee); activations below
//!   `sp` are left for the next exit to judge (they may be alive: a signal handler running on
//!   an alternate stack higher in the same mapping);
//! * the walk stops at the first activation above `sp` on the same stack: it and everything
//!   older are outer frames, alive.
//!
//! Away from the word, at an exit, that is the rule of return probes that hijack return
//! addresses ([`super::beside`]); at an entry it judges less, as no return address tells
//! whether a frame below is gone.
//!
//! A tail call (`jmp` to another function) leaves the caller with no return value yet: its
//! activation is *handed over* and stays on its word; the callee's entry on that word keeps it
//! (instead of making it stale), and the callee's return returns both, innermost first, with
//! the callee's return value (the kernel's "chained" uretprobes). A handed-over activation
//! that becomes stale did leave, through a callee whose return was not watched.
//!
//! An activation on another stack, below `sp` or above it (a signal handler on an alternate
//! stack, a coroutine's stack switched away from), cannot be judged from here and is left
//! alone, and the walk goes on past it; the stack an address lies on is asked only then,
//! never on the common path where the innermost activation is the one leaving.
//!
//! No return address is read or written, so exceptions, `longjmp`, alternate stacks, stack
//! switching, tail calls and programs that read their own return address all see the stack as
//! the program left it, and recursion has no depth limit but the storage an engine gives it.

use super::{beside, StackNames, Verdict};

/// A thread's activations, oldest first, in whatever storage an engine keeps them (a vector,
/// or a fixed lock-free array on a signal-safe hit path).
pub trait Activations {
    /// How many are pending.
    fn depth(&self) -> usize;
    /// The stack pointer at activation `i`'s entry.
    fn sp(&self, i: usize) -> u64;
    /// Whether activation `i` left by a tail call and returns with the callee it jumped to.
    /// Asked only at an entry, of an activation on the entry's own word (the live return
    /// address), which an engine may read to tell.
    fn handed_over(&self, i: usize) -> bool;
    /// Drop stale activation `i` (the engine counts it as abandoned, or as returned if it
    /// was handed over, and gives back what it held).
    fn abandon(&mut self, i: usize);
}

/// At an entry with stack pointer `sp`: drop the activations a new call has made stale.
/// `stacks` names the stack an address lies on.
/// Returns how many were dropped.
pub fn enter(acts: &mut (impl Activations + ?Sized), sp: u64, stacks: &mut impl StackNames) -> usize {
    sweep(acts, sp, true, stacks).1
}

/// At an exit with stack pointer `sp`: drop the stale activations below it, and return the
/// innermost activation at `sp` (the one leaving), if any. An entry replaces an activation on
/// its own word unless that one was handed over by a tail call, so an engine keeps one
/// activation per entry (listing the probes of the function in it); the activations handed
/// over to the one leaving lie right under it, at the same `sp`.
pub fn leave(acts: &mut (impl Activations + ?Sized), sp: u64, stacks: &mut impl StackNames) -> Option<usize> {
    sweep(acts, sp, false, stacks).0
}

fn sweep(
    acts: &mut (impl Activations + ?Sized),
    sp: u64,
    entry: bool,
    stacks: &mut impl StackNames,
) -> (Option<usize>, usize) {
    if entry {
        return (None, sweep_entry(acts, sp));
    }
    let mut here = None;
    let mut dropped = 0;
    for i in (0..acts.depth()).rev() {
        let s = acts.sp(i);
        if s == sp {
            return (Some(i), dropped);
        }
        let here_stack = *here.get_or_insert_with(|| stacks.stack_of(sp));
        match beside(s, stacks.stack_of(s), sp, here_stack) {
            // Named alike from an out-of-date memory: another stack's after all. Asked of an
            // outer frame only where the one leaving lies further down the list (on one stack
            // no older frame lies deeper than a newer one): an exit whose entry was not kept
            // (vetoed, missed) asks nothing.
            Verdict::Outer if (0..i).any(|j| acts.sp(j) == sp) && !stacks.same_stack(s, sp) => {}
            Verdict::Stale if !stacks.same_stack(s, sp) => {}
            // An outer frame of this stack: everything older is alive too.
            Verdict::Outer => break,
            Verdict::Stale => {
                acts.abandon(i);
                dropped += 1;
            }
            // Another stack's (a coroutine switched away from, a handler's alternate stack):
            // not judged from this one, above or below.
            Verdict::Foreign | Verdict::Chained | Verdict::Returning => {}
        }
    }
    (None, dropped)
}

/// At an entry, only an activation on the entry's own word is known dead (a new call wrote
/// it), with every activation pushed after it (nested in it). Activations below `sp` may be
/// alive (a signal handler on an alternate stack that lies higher in the same mapping): they
/// are judged at the next exit.
fn sweep_entry(acts: &mut (impl Activations + ?Sized), sp: u64) -> usize {
    let Some(i) = (0..acts.depth()).rev().take_while(|&i| acts.sp(i) <= sp).find(|&i| acts.sp(i) == sp) else {
        return 0;
    };
    // A tail call into this function keeps the caller it was handed over by; a call made
    // stale takes with it the callers that would have returned with it.
    let first = if acts.handed_over(i) {
        i + 1
    } else {
        let mut first = i;
        while first > 0 && acts.sp(first - 1) == sp && acts.handed_over(first - 1) {
            first -= 1;
        }
        first
    };
    let dropped = acts.depth() - first;
    for j in (first..acts.depth()).rev() {
        acts.abandon(j);
    }
    dropped
}

/// A thread's activations in a growable vector (engines that may allocate).
#[derive(Debug, Clone)]
pub struct ActivationStack<T> {
    /// (stack pointer, handed over, data), oldest first.
    pending: Vec<(u64, bool, T)>,
    abandoned: Vec<(T, bool)>,
}

impl<T> Default for ActivationStack<T> {
    fn default() -> Self {
        ActivationStack { pending: Vec::new(), abandoned: Vec::new() }
    }
}

impl<T> Activations for ActivationStack<T> {
    fn depth(&self) -> usize {
        self.pending.len()
    }
    fn sp(&self, i: usize) -> u64 {
        self.pending[i].0
    }
    fn handed_over(&self, i: usize) -> bool {
        self.pending[i].1
    }
    fn abandon(&mut self, i: usize) {
        let (_, handed_over, data) = self.pending.remove(i);
        self.abandoned.push((data, handed_over));
    }
}

/// What an exit did to a thread's activations.
#[derive(Debug, PartialEq, Eq)]
pub struct Left<T> {
    /// Stale activations, innermost first, each with whether it had been handed over by a
    /// tail call (it did leave, through a callee whose return was not seen).
    pub stale: Vec<(T, bool)>,
    /// The activations returning now, innermost first: the one at the exit's stack pointer
    /// and those that handed their return over to it.
    pub returning: Vec<T>,
}

impl<T> ActivationStack<T> {
    /// An entry with stack pointer `sp`: returns the activations it made stale, innermost
    /// first (with whether each had been handed over), and keeps `data` as the new innermost.
    pub fn enter(&mut self, sp: u64, data: T, stacks: &mut impl StackNames) -> Vec<(T, bool)> {
        enter(self, sp, stacks);
        self.pending.push((sp, false, data));
        std::mem::take(&mut self.abandoned)
    }

    /// A return (`ret`) with stack pointer `sp`: the activation at `sp` returns, with every
    /// activation that handed its return over to it.
    pub fn leave(&mut self, sp: u64, stacks: &mut impl StackNames) -> Left<T> {
        let mut returning = Vec::new();
        if let Some(i) = leave(self, sp, stacks) {
            let (i, handed) = self.remove_handed_over(i);
            returning.push(self.pending.remove(i).2);
            returning.extend(handed);
        }
        Left { stale: std::mem::take(&mut self.abandoned), returning }
    }

    /// The innermost activation, if it is on word `sp` and was not handed over: for an engine
    /// that hears of a call once per probe of the function (the kernel's events), the call
    /// an entry at `sp` may be another probe's share of, rather than a new call.
    pub fn innermost_at(&mut self, sp: u64) -> Option<&mut T> {
        self.pending.last_mut().filter(|p| p.0 == sp && !p.1).map(|p| &mut p.2)
    }

    /// An exit with stack pointer `sp` heard once per probe of the function: `take` takes
    /// this probe's share of the activation at `sp` (`None`: nothing of it returns here).
    /// With the first share taken, the activations that handed their return over to it
    /// return whole; the activation itself goes once `spent` says no share is left. Returns
    /// the share, and what the exit did (the activations returning whole, innermost first).
    pub fn leave_share<U>(
        &mut self,
        sp: u64,
        stacks: &mut impl StackNames,
        take: impl FnOnce(&mut T) -> Option<U>,
        spent: impl FnOnce(&T) -> bool,
    ) -> (Option<U>, Left<T>) {
        let mut returning = Vec::new();
        let share = leave(self, sp, stacks).and_then(|i| {
            let share = take(&mut self.pending[i].2)?;
            let (i, handed) = self.remove_handed_over(i);
            returning = handed;
            if spent(&self.pending[i].2) {
                self.pending.remove(i);
            }
            Some(share)
        });
        (share, Left { stale: std::mem::take(&mut self.abandoned), returning })
    }

    /// Remove the activations right under activation `i` that handed their return over to
    /// it (on its word, handed over by a tail call); returns `i`'s index after, and them,
    /// innermost first.
    fn remove_handed_over(&mut self, mut i: usize) -> (usize, Vec<T>) {
        let sp = self.pending[i].0;
        let mut handed = Vec::new();
        while i > 0 && self.pending[i - 1].0 == sp && self.pending[i - 1].1 {
            i -= 1;
            handed.push(self.pending.remove(i).2);
        }
        (i, handed)
    }

    /// A tail call with stack pointer `sp`: the activation at `sp` returns with the callee it
    /// jumps to (whose entry finds it on the same word). Returns the stale activations and
    /// the one handed over, to keep what the engine wants of the jump.
    pub fn hand_over(&mut self, sp: u64, stacks: &mut impl StackNames) -> (Vec<(T, bool)>, Option<&mut T>) {
        let i = leave(self, sp, stacks);
        let stale = std::mem::take(&mut self.abandoned);
        let handed = i.map(|i| {
            self.pending[i].1 = true;
            &mut self.pending[i].2
        });
        (stale, handed)
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// The pending activations' data, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.pending.iter().map(|p| &p.2)
    }

    /// The stack pointers of the activations handed over by a tail call.
    pub fn iter_handed_over(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.iter().filter(|p| p.1).map(|p| p.0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Everything, innermost first, with whether each had been handed over (the thread
    /// exited).
    pub fn drain(&mut self) -> Vec<(T, bool)> {
        let mut all: Vec<(T, bool)> = self.pending.drain(..).map(|(_, h, d)| (d, h)).collect();
        all.reverse();
        all
    }
}

#[cfg(test)]
mod tests;
