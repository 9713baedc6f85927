//! Return instances: the calls of return-probed functions that have not returned yet, kept per
//! thread innermost last, and the one rule every engine uses to tell which of them are still
//! alive (the kernel's `cleanup_return_instances()` with `arch_uretprobe_is_alive()`).
//!
//! An instance is the return-address slot a function's entry hijacked (the stack pointer at
//! its first instruction), the stack that slot lies on, and the real return address. At each
//! entry and each return through a hijacked slot the engine asks the rule about the
//! instances, from the innermost out:
//!
//! * a slot above the current one on the same stack is an outer frame: it and everything
//!   older are alive;
//! * a slot on another stack cannot be judged from here (a signal handler on the alternate
//!   stack, which may lie higher than the frames it interrupted): it is left alone;
//! * a slot below the current one on the same stack belongs to a frame the program abandoned
//!   (`longjmp`, an exception, a thread that switched frames away): stale;
//! * at an entry, the current slot itself: if it still holds the hijacked address, the call
//!   came by a jump from a probed function that hijacked it (a tail call, or another return
//!   probe on the same function): the instances are chained and return together; if not, a
//!   new `call` overwrote it: stale;
//! * at a return, the current slot: that instance is returning.
//!
//! The rule only reads; the engines keep their own storage: [`ReturnStack`] for an engine
//! that may allocate (the ptrace engine), or any fixed, lock-free per-thread array through
//! [`InstanceStack`] (the in-process engine's signal-safe one). [`InstancePool`] is the
//! `maxactive` limit, with no limit by default.
//!
//! Return probes that watch a function's exits instead of hijacking its return address pair
//! entries and exits by the stack pointer alone: [`exits`].

pub mod exits;
mod mode;

pub use mode::ReturnMode;

/// Where a thread is when the rule is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// At a probed function's first instruction: the return address is at `sp`.
    Entry {
        /// The stack pointer there.
        sp: u64,
    },
    /// Just returned through a hijacked slot: `sp` is one word past the slot.
    Return {
        /// The stack pointer after the `ret`.
        sp: u64,
    },
}

impl At {
    /// The return-address slot this entry or return is about.
    pub fn slot(self) -> u64 {
        match self {
            At::Entry { sp } => sp,
            At::Return { sp } => sp.wrapping_sub(8),
        }
    }
}

/// What the rule asks an engine about the thread's stacks. A closure naming stacks is one
/// (that trusts its names).
pub trait StackNames {
    /// A name for the stack holding `addr`: equal for two addresses on the same stack (the
    /// thread's own, its alternate signal stack, a coroutine's), different otherwise.
    fn stack_of(&mut self, addr: u64) -> u64;
    /// Whether addresses `a` and `b`, which [`StackNames::stack_of`] named alike, do lie on
    /// one stack. Asked before a pending call is judged by it (dropped as stale, or, at an
    /// exit, taken for an outer frame), never on the common path: an engine whose names come
    /// from a memory of the mappings that may be out of date (a stack unmapped, others mapped
    /// where it was) looks afresh here.
    fn same_stack(&mut self, _a: u64, _b: u64) -> bool {
        true
    }
}

impl<F: FnMut(u64) -> u64> StackNames for F {
    fn stack_of(&mut self, addr: u64) -> u64 {
        self(addr)
    }
}

/// What the rule of hijacked return addresses asks an engine about the thread's memory.
pub trait ThreadStacks: StackNames {
    /// Whether the return-address slot at `slot` still holds the address the engine wrote.
    fn hijacked(&mut self, slot: u64) -> bool;
}

/// The rule's answer about one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An outer frame of the current stack: it and every older instance are alive.
    Outer,
    /// On another stack: left alone.
    Foreign,
    /// Its frame is gone.
    Stale,
    /// At an entry, the same slot, still hijacked: the new call returns through it.
    Chained,
    /// At a return, the slot returned through.
    Returning,
}

/// The rule for an instance whose slot is `slot` on stack `slot_stack`, seen at `at` on stack
/// `here_stack`.
pub fn judge(
    slot: u64,
    slot_stack: u64,
    at: At,
    here_stack: u64,
    stacks: &mut (impl ThreadStacks + ?Sized),
) -> Verdict {
    let here = at.slot();
    if slot == here {
        return match at {
            At::Return { .. } => Verdict::Returning,
            At::Entry { .. } if stacks.hijacked(slot) => Verdict::Chained,
            At::Entry { .. } => Verdict::Stale,
        };
    }
    beside(slot, slot_stack, here, here_stack)
}

/// The rule for an instance whose slot is `slot` on stack `slot_stack`, seen from another slot,
/// `here`, on stack `here_stack`: an outer frame above it on the same stack, a stale one below
/// it, or on another stack. Every return probe judges by it, whether it hijacks return
/// addresses or watches exits ([`exits`]).
pub fn beside(slot: u64, slot_stack: u64, here: u64, here_stack: u64) -> Verdict {
    match (slot_stack == here_stack, slot > here) {
        (false, _) => Verdict::Foreign,
        (true, true) => Verdict::Outer,
        (true, false) => Verdict::Stale,
    }
}

/// A thread's pending instances, oldest first, in whatever storage an engine keeps them.
pub trait InstanceStack {
    /// How many are pending.
    fn depth(&self) -> usize;
    /// The return-address slot of instance `i`.
    fn slot(&self, i: usize) -> u64;
    /// The stack instance `i` was pushed on ([`StackNames::stack_of`] its slot).
    fn stack(&self, i: usize) -> u64;
    /// Remove stale instance `i` (the engine gives back its resources and counts it).
    fn reclaim(&mut self, i: usize);
}

/// Reclaim every stale instance of a thread at `at`, innermost first, stopping at the first
/// outer frame of the current stack. Returns how many were reclaimed. The stack of the
/// current slot is asked for only when no instance lies at the current slot.
pub fn reclaim(stack: &mut (impl InstanceStack + ?Sized), at: At, stacks: &mut (impl ThreadStacks + ?Sized)) -> usize {
    let mut here_stack = None;
    let mut reclaimed = 0;
    for i in (0..stack.depth()).rev() {
        let slot = stack.slot(i);
        let here = match here_stack {
            Some(s) => s,
            // An instance at the current slot is on the current stack.
            None if slot == at.slot() => *here_stack.insert(stack.stack(i)),
            None => *here_stack.insert(stacks.stack_of(at.slot())),
        };
        match judge(slot, stack.stack(i), at, here, stacks) {
            Verdict::Outer => break,
            // Named alike from an out-of-date memory: another stack's after all.
            Verdict::Stale if slot != at.slot() && !stacks.same_stack(slot, at.slot()) => {}
            Verdict::Stale => {
                stack.reclaim(i);
                reclaimed += 1;
            }
            Verdict::Foreign | Verdict::Chained | Verdict::Returning => {}
        }
    }
    reclaimed
}

/// The innermost instance at `slot`, if any (after [`reclaim`]: the one returning, or the one
/// an entry chains to). The search ends at the first outer frame of the slot's stack.
pub fn innermost_at(
    stack: &(impl InstanceStack + ?Sized),
    slot: u64,
    stacks: &mut (impl ThreadStacks + ?Sized),
) -> Option<usize> {
    let mut slot_stack = None;
    for i in (0..stack.depth()).rev() {
        if stack.slot(i) == slot {
            return Some(i);
        }
        if stack.slot(i) > slot && stack.stack(i) == *slot_stack.get_or_insert_with(|| stacks.stack_of(slot)) {
            return None;
        }
    }
    None
}

/// One pending return in a [`ReturnStack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance<T> {
    /// The hijacked return-address slot.
    pub slot: u64,
    /// The stack it lies on.
    pub stack: u64,
    /// The real return address.
    pub ret: u64,
    /// What the engine keeps with it.
    pub data: T,
}

/// A thread's pending instances in a growable vector: no depth limit.
#[derive(Debug, Clone)]
pub struct ReturnStack<T> {
    instances: Vec<Instance<T>>,
    /// What [`InstanceStack::reclaim`] removed, until [`ReturnStack::reclaim`] hands it out.
    reclaimed: Vec<Instance<T>>,
}

impl<T> Default for ReturnStack<T> {
    fn default() -> Self {
        ReturnStack { instances: Vec::new(), reclaimed: Vec::new() }
    }
}

impl<T> InstanceStack for ReturnStack<T> {
    fn depth(&self) -> usize {
        self.instances.len()
    }
    fn slot(&self, i: usize) -> u64 {
        self.instances[i].slot
    }
    fn stack(&self, i: usize) -> u64 {
        self.instances[i].stack
    }
    fn reclaim(&mut self, i: usize) {
        self.reclaimed.push(self.instances.remove(i));
    }
}

impl<T> ReturnStack<T> {
    /// Instances pending, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Instance<T>> {
        self.instances.iter()
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Reclaim the stale instances at `at`; returns them, innermost first.
    pub fn reclaim(&mut self, at: At, stacks: &mut (impl ThreadStacks + ?Sized)) -> Vec<Instance<T>> {
        reclaim(self, at, stacks);
        std::mem::take(&mut self.reclaimed)
    }

    /// The innermost instance an entry at `sp` chains to (call [`ReturnStack::reclaim`]
    /// first): its real return address is the new call's.
    pub fn chained(&self, sp: u64, stacks: &mut (impl ThreadStacks + ?Sized)) -> Option<&Instance<T>> {
        innermost_at(self, sp, stacks).map(|i| &self.instances[i])
    }

    /// Every instance chained at `slot`, to change what they keep (a shared return record).
    pub fn at_slot_mut(&mut self, slot: u64) -> impl Iterator<Item = &mut Instance<T>> {
        self.instances.iter_mut().filter(move |i| i.slot == slot)
    }

    /// A new instance at the entry with stack pointer `sp`, on stack `stack`, returning to
    /// `ret`.
    pub fn push(&mut self, sp: u64, stack: u64, ret: u64, data: T) {
        self.instances.push(Instance { slot: sp, stack, ret, data });
    }

    /// A return through a hijacked slot, with `sp` past it: returns (stale, returning), each
    /// innermost first. Every instance chained at the slot returns now.
    pub fn pop_for(
        &mut self,
        sp: u64,
        stacks: &mut (impl ThreadStacks + ?Sized),
    ) -> (Vec<Instance<T>>, Vec<Instance<T>>) {
        let at = At::Return { sp };
        let stale = self.reclaim(at, stacks);
        let slot = at.slot();
        let mut returning = Vec::new();
        let mut here_stack = None;
        for i in (0..self.instances.len()).rev() {
            let inst = &self.instances[i];
            if inst.slot == slot {
                here_stack.get_or_insert(inst.stack);
                returning.push(self.instances.remove(i));
            } else if inst.slot > slot && inst.stack == *here_stack.get_or_insert_with(|| stacks.stack_of(slot)) {
                break;
            }
        }
        (stale, returning)
    }

    /// Remove the instances `pred` picks (their returns were recorded elsewhere), innermost
    /// first.
    pub fn take_where(&mut self, mut pred: impl FnMut(&Instance<T>) -> bool) -> Vec<Instance<T>> {
        let mut out = Vec::new();
        for i in (0..self.instances.len()).rev() {
            if pred(&self.instances[i]) {
                out.push(self.instances.remove(i));
            }
        }
        out
    }

    /// Everything, innermost first (the thread exited, or the program image is gone).
    pub fn drain(&mut self) -> Vec<Instance<T>> {
        let mut all = std::mem::take(&mut self.instances);
        all.reverse();
        all
    }
}

/// How many instances of one return probe may be pending at once, over all threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstancePool {
    /// `None`: no limit (the storage grows as the kernel's uretprobes' does).
    limit: Option<usize>,
    active: usize,
    missed: u64,
}

impl InstancePool {
    /// A pool of at most `limit` instances (`None` or `Some(0)`: no limit).
    pub fn new(limit: Option<usize>) -> Self {
        InstancePool { limit: limit.filter(|&n| n > 0), active: 0, missed: 0 }
    }

    /// Take an instance for a new call; `false` (and counted as missed) when all are in use.
    pub fn take(&mut self) -> bool {
        if self.limit.is_some_and(|n| self.active >= n) {
            self.missed += 1;
            return false;
        }
        self.active += 1;
        true
    }

    /// Give one back (returned or reclaimed).
    pub fn give_back(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Give every one back (the program image they belonged to is gone).
    pub fn reset(&mut self) {
        self.active = 0;
    }

    /// Instances in use.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Calls not traced because every instance was in use.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }
}

#[cfg(test)]
mod tests;
