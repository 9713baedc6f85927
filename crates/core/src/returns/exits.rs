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
//! * at an entry with `sp`, activations at or below `sp` are stale too: a new call has
//!   reused their return-address word;
//! * the walk stops at the first activation above `sp`: it and everything older are outer
//!   frames, alive.
//!
//! An activation below `sp` on another stack (a signal handler on an alternate stack that lies
//! higher than the frames it interrupted, a coroutine's stack) cannot be judged from here and
//! is left alone; the stack an address lies on is asked only then, never on the common path
//! where the innermost activation is the one leaving.
//!
//! No return address is read or written, so exceptions, `longjmp`, alternate stacks, stack
//! switching, tail calls and programs that read their own return address all see the stack as
//! the program left it, and recursion has no depth limit but the storage an engine gives it.

/// A thread's activations, oldest first, in whatever storage an engine keeps them (a vector,
/// or a fixed lock-free array on a signal-safe hit path).
pub trait Activations {
    /// How many are pending.
    fn depth(&self) -> usize;
    /// The stack pointer at activation `i`'s entry.
    fn sp(&self, i: usize) -> u64;
    /// Drop stale activation `i` (the engine counts it as abandoned and gives back what it
    /// held).
    fn abandon(&mut self, i: usize);
}

/// At an entry with stack pointer `sp`: drop the activations a new call has made stale.
/// `stack_of` names the stack an address lies on (equal for two addresses of one stack).
/// Returns how many were dropped.
pub fn enter(acts: &mut (impl Activations + ?Sized), sp: u64, stack_of: &mut impl FnMut(u64) -> u64) -> usize {
    sweep(acts, sp, true, stack_of).1
}

/// At an exit with stack pointer `sp`: drop the stale activations below it, and return the
/// innermost activation at `sp` (the one leaving), if any. An entry replaces an activation on
/// its own word, so an engine keeps one activation per entry (listing the probes of the
/// function in it).
pub fn leave(acts: &mut (impl Activations + ?Sized), sp: u64, stack_of: &mut impl FnMut(u64) -> u64) -> Option<usize> {
    sweep(acts, sp, false, stack_of).0
}

fn sweep(
    acts: &mut (impl Activations + ?Sized),
    sp: u64,
    entry: bool,
    stack_of: &mut impl FnMut(u64) -> u64,
) -> (Option<usize>, usize) {
    let mut here = None;
    let mut dropped = 0;
    for i in (0..acts.depth()).rev() {
        let s = acts.sp(i);
        if s > sp {
            break;
        }
        if s == sp {
            if !entry {
                return (Some(i), dropped);
            }
        } else if *here.get_or_insert_with(|| stack_of(sp)) != stack_of(s) {
            continue;
        }
        acts.abandon(i);
        dropped += 1;
    }
    (None, dropped)
}

/// A thread's activations in a growable vector (engines that may allocate).
#[derive(Debug, Clone)]
pub struct ActivationStack<T> {
    pending: Vec<(u64, T)>,
    abandoned: Vec<T>,
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
    fn abandon(&mut self, i: usize) {
        self.abandoned.push(self.pending.remove(i).1);
    }
}

impl<T> ActivationStack<T> {
    /// An entry with stack pointer `sp`: returns the activations it made stale, innermost
    /// first, and keeps `data` as the new innermost one.
    pub fn enter(&mut self, sp: u64, data: T, stack_of: &mut impl FnMut(u64) -> u64) -> Vec<T> {
        enter(self, sp, stack_of);
        self.pending.push((sp, data));
        std::mem::take(&mut self.abandoned)
    }

    /// An exit with stack pointer `sp`: returns the stale activations, innermost first, and
    /// the one leaving, if any.
    pub fn leave(&mut self, sp: u64, stack_of: &mut impl FnMut(u64) -> u64) -> (Vec<T>, Option<T>) {
        let leaving = leave(self, sp, stack_of).map(|i| self.pending.remove(i).1);
        (std::mem::take(&mut self.abandoned), leaving)
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Pending activations, oldest first, with their stack pointers.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, T)> {
        self.pending.iter()
    }

    /// Remove the activations `pred` picks, innermost first.
    pub fn take_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for i in (0..self.pending.len()).rev() {
            if pred(&self.pending[i].1) {
                out.push(self.pending.remove(i).1);
            }
        }
        out
    }

    /// Everything, innermost first (the thread exited).
    pub fn drain(&mut self) -> Vec<T> {
        let mut all: Vec<T> = self.pending.drain(..).map(|(_, d)| d).collect();
        all.reverse();
        all
    }
}

#[cfg(test)]
mod tests;
