//! The rule on a simulated thread: calls write real return addresses into stack words, probed
//! entries hijack them, returns read them back.
use std::collections::HashMap;

use super::*;

/// What hijacked slots hold (the trampoline's address).
const HIJACK: u64 = 0xdead_0000;

/// The thread's memory: words, and which stack each address range is.
struct Memory {
    words: HashMap<u64, u64>,
    /// (lowest, end, name)
    stacks: Vec<(u64, u64, u64)>,
    /// The stacks as they are now, where `stacks` is an out-of-date memory of them.
    fresh: Option<Vec<(u64, u64, u64)>>,
}

fn name(stacks: &[(u64, u64, u64)], addr: u64) -> u64 {
    stacks.iter().find(|(lo, end, _)| (*lo..*end).contains(&addr)).map_or(0, |s| s.2)
}

impl StackNames for Memory {
    fn stack_of(&mut self, addr: u64) -> u64 {
        name(&self.stacks, addr)
    }
    fn same_stack(&mut self, a: u64, b: u64) -> bool {
        self.fresh.as_ref().is_none_or(|fresh| name(fresh, a) == name(fresh, b))
    }
}

impl ThreadStacks for Memory {
    fn hijacked(&mut self, slot: u64) -> bool {
        self.words.get(&slot) == Some(&HIJACK)
    }
}

const MAIN: (u64, u64, u64) = (0x10_0000, 0x20_0000, 1);
const ALT: (u64, u64, u64) = (0x80_0000, 0x81_0000, 2);

struct Thread {
    memory: Memory,
    pending: ReturnStack<&'static str>,
    pool: InstancePool,
    returned: Vec<&'static str>,
    stale: Vec<&'static str>,
}

impl Thread {
    fn new(limit: Option<usize>) -> Thread {
        Thread {
            memory: Memory { words: HashMap::new(), stacks: vec![MAIN, ALT], fresh: None },
            pending: ReturnStack::default(),
            pool: InstancePool::new(limit),
            returned: Vec::new(),
            stale: Vec::new(),
        }
    }

    /// `call` to probed function `name` with the stack pointer `sp` after the call.
    fn call(&mut self, sp: u64, ret: u64, name: &'static str) {
        self.memory.words.insert(sp, ret);
        self.enter(sp, name);
    }

    /// The probed function's entry (reached by a call or a jump).
    fn enter(&mut self, sp: u64, name: &'static str) {
        for gone in self.pending.reclaim(At::Entry { sp }, &mut self.memory) {
            self.pool.give_back();
            self.stale.push(gone.data);
        }
        if !self.pool.take() {
            return;
        }
        let real = match self.pending.chained(sp, &mut self.memory) {
            Some(outer) => outer.ret,
            None => self.memory.words[&sp],
        };
        let stack = self.memory.stack_of(sp);
        self.pending.push(sp, stack, real, name);
        self.memory.words.insert(sp, HIJACK);
    }

    /// `ret` with the return address at `sp`: where the thread goes.
    fn ret(&mut self, sp: u64) -> u64 {
        let word = self.memory.words[&sp];
        if word != HIJACK {
            return word;
        }
        let (stale, returning) = self.pending.pop_for(sp + 8, &mut self.memory);
        for gone in stale {
            self.pool.give_back();
            self.stale.push(gone.data);
        }
        let real = returning.first().expect("a pending instance for a hijacked slot").ret;
        for r in returning {
            assert_eq!(r.ret, real, "chained instances share the real return address");
            self.pool.give_back();
            self.returned.push(r.data);
        }
        real
    }
}

#[test]
fn a_stack_named_alike_from_an_out_of_date_memory_keeps_its_pending_call() {
    let mut t = Thread::new(None);
    // One mapping was unmapped, and two coroutine stacks mapped where it was.
    t.memory.stacks = vec![(0x10_0000, 0x30_0000, 1)];
    t.memory.fresh = Some(vec![(0x10_0000, 0x20_0000, 1), (0x20_0000, 0x30_0000, 2)]);
    t.call(0x1f_ff00, 0x400100, "lower");
    // Switched to the other coroutine, which calls and returns above the first one's slot.
    t.call(0x2f_ff00, 0x400200, "upper");
    assert_eq!(t.ret(0x2f_ff00), 0x400200);
    // Switched back: the first one's call is still pending.
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.stale, t.pool.active()), (vec!["upper", "lower"], vec![], 0));
}

#[test]
fn nested_calls_return_innermost_first() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "outer");
    t.call(0x1f_fe00, 0x400200, "inner");
    assert_eq!(t.ret(0x1f_fe00), 0x400200);
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.stale, t.pending.len(), t.pool.active()), (vec!["inner", "outer"], vec![], 0, 0));
}

#[test]
fn recursion_ten_thousand_deep_has_no_default_limit() {
    let mut t = Thread::new(None);
    let depth = 10_000u64;
    for d in 0..depth {
        t.call(0x1f_ff00 - 0x30 * d, 0x400000 + d, "recurse");
    }
    assert_eq!(t.pending.len(), 10_000);
    for d in (0..depth).rev() {
        assert_eq!(t.ret(0x1f_ff00 - 0x30 * d), 0x400000 + d, "depth {d}");
    }
    assert_eq!((t.returned.len(), t.stale.len(), t.pool.missed(), t.pool.active()), (10_000, 0, 0, 0));
}

#[test]
fn maxactive_traces_the_outermost_calls_and_counts_the_rest_as_missed() {
    let mut t = Thread::new(Some(4));
    for d in 0..10u64 {
        t.call(0x1f_ff00 - 0x30 * d, 0x400000 + d, "recurse");
    }
    for d in (0..10u64).rev() {
        assert_eq!(t.ret(0x1f_ff00 - 0x30 * d), 0x400000 + d, "every call returns where it should");
    }
    assert_eq!((t.returned.len(), t.pool.missed(), t.stale.len(), t.pool.active()), (4, 6, 0, 0));
}

#[test]
fn frames_skipped_by_longjmp_are_stale_at_the_next_entry_above_them() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "a");
    t.call(0x1f_fe00, 0x400200, "b");
    t.call(0x1f_fd00, 0x400300, "c");
    // c longjmps back into a's frame; a calls d from there, above b's slot.
    t.call(0x1f_fe80, 0x400400, "d");
    assert_eq!(t.stale, vec!["c", "b"]);
    assert_eq!(t.ret(0x1f_fe80), 0x400400);
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.pool.active()), (vec!["d", "a"], 0));
}

#[test]
fn a_new_call_into_an_abandoned_slot_makes_it_stale() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "a");
    t.call(0x1f_fe00, 0x400200, "b");
    // b longjmps out; a calls again from the same place: the call overwrites b's slot.
    t.call(0x1f_fe00, 0x400200, "b");
    assert_eq!(t.stale, vec!["b"]);
    assert_eq!(t.ret(0x1f_fe00), 0x400200);
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.pending.len()), (vec!["b", "a"], 0));
}

#[test]
fn a_tail_call_chains_to_the_callers_instance_and_both_return_once() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "outer");
    // outer: jmp inner. inner's entry finds its slot still hijacked.
    t.enter(0x1f_ff00, "inner");
    assert_eq!(t.pending.len(), 2);
    // inner calls something probed below, which returns normally.
    t.call(0x1f_fe00, 0x400200, "leaf");
    assert_eq!(t.ret(0x1f_fe00), 0x400200);
    // inner's ret goes straight to outer's caller.
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.stale, t.pool.active()), (vec!["leaf", "inner", "outer"], vec![], 0));
}

#[test]
fn a_tail_call_into_an_unprobed_function_returns_the_callers_instance() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "outer");
    // outer: jmp helper (not probed), whose ret reads the hijacked slot.
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.pending.len()), (vec!["outer"], 0));
}

#[test]
fn a_handler_on_a_higher_alternate_stack_keeps_the_interrupted_instance() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "outer");
    // A signal: its handler runs on the alternate stack, above every frame of the thread's.
    t.call(0x80_ff00, 0x400200, "nested");
    assert_eq!(t.ret(0x80_ff00), 0x400200);
    // sigreturn, then the interrupted function returns.
    assert_eq!(t.ret(0x1f_ff00), 0x400100);
    assert_eq!((t.returned, t.stale, t.pending.len()), (vec!["nested", "outer"], vec![], 0));
}

#[test]
fn instances_left_on_the_alternate_stack_by_siglongjmp_go_when_it_is_used_again() {
    let mut t = Thread::new(None);
    t.call(0x1f_ff00, 0x400100, "outer");
    t.call(0x80_ff00, 0x400200, "handler-call");
    // The handler siglongjmps to main, above outer's frame, which calls again there.
    t.call(0x1f_ff80, 0x400300, "main-call");
    assert_eq!(t.stale, vec!["outer"], "the thread's own stack is judged; the other one is left alone");
    assert_eq!(t.ret(0x1f_ff80), 0x400300);
    // The next signal's handler starts again at the top of the alternate stack.
    t.call(0x80_ff00, 0x400200, "handler-call");
    assert_eq!(t.stale, vec!["outer", "handler-call"]);
    assert_eq!(t.ret(0x80_ff00), 0x400200);
    assert_eq!((t.returned, t.pending.len()), (vec!["main-call", "handler-call"], 0));
}

#[test]
fn the_rule_at_a_glance() {
    let mut m = Memory { words: HashMap::from([(0x1000, HIJACK)]), stacks: vec![MAIN, ALT], fresh: None };
    let entry = At::Entry { sp: 0x1000 };
    assert_eq!(judge(0x1100, 1, entry, 1, &mut m), Verdict::Outer);
    assert_eq!(judge(0x0f00, 1, entry, 1, &mut m), Verdict::Stale);
    assert_eq!(judge(0x0f00, 2, entry, 1, &mut m), Verdict::Foreign);
    assert_eq!(judge(0x1000, 1, entry, 1, &mut m), Verdict::Chained);
    m.words.insert(0x1000, 0x400100);
    assert_eq!(judge(0x1000, 1, entry, 1, &mut m), Verdict::Stale, "a new call overwrote the slot");
    assert_eq!(judge(0x1000, 1, At::Return { sp: 0x1008 }, 1, &mut m), Verdict::Returning);
    assert_eq!(judge(0x0ff8, 1, At::Return { sp: 0x1008 }, 1, &mut m), Verdict::Stale);
}
