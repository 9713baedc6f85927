//! The rule on simulated threads: entries and exits named by their stack pointers.
use super::*;

const MAIN: (u64, u64) = (0x10_0000, 0x20_0000);
const ALT: (u64, u64) = (0x80_0000, 0x81_0000);

/// What an exit did, with no stale activation handed over.
fn left<T: Clone>(stale: &[T], returning: &[T]) -> Left<T> {
    Left { stale: stale.iter().map(|s| (s.clone(), false)).collect(), returning: returning.to_vec() }
}

/// A simulated thread: its activations, and how often the stack of an address was asked.
struct Thread<T> {
    acts: ActivationStack<T>,
    asked: usize,
}

impl<T> Thread<T> {
    fn new() -> Self {
        Thread { acts: ActivationStack::default(), asked: 0 }
    }

    /// Names the stack an address is on, counting the questions.
    fn stacks(asked: &mut usize) -> impl FnMut(u64) -> u64 + '_ {
        |addr| {
            *asked += 1;
            [MAIN, ALT].iter().find(|(lo, end)| (*lo..*end).contains(&addr)).map_or(0, |s| s.1)
        }
    }

    fn enter(&mut self, sp: u64, data: T) -> Vec<(T, bool)> {
        self.acts.enter(sp, data, &mut Self::stacks(&mut self.asked))
    }

    fn leave(&mut self, sp: u64) -> Left<T> {
        self.acts.leave(sp, &mut Self::stacks(&mut self.asked))
    }

    fn hand_over(&mut self, sp: u64) -> (Vec<(T, bool)>, Option<&mut T>) {
        self.acts.hand_over(sp, &mut Self::stacks(&mut self.asked))
    }

    fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }
}

#[test]
fn nested_calls_leave_innermost_first_and_the_common_path_asks_no_stack() {
    let mut t = Thread::new();
    let top = MAIN.1 - 0x100;
    for (k, name) in ["a", "b", "c"].into_iter().enumerate() {
        assert!(t.enter(top - 0x40 * k as u64, name).is_empty());
    }
    for (k, name) in ["c", "b", "a"].into_iter().enumerate() {
        assert_eq!(t.leave(top - 0x40 * (2 - k as u64)), left(&[], &[name]));
    }
    assert!(t.is_empty());
    // Sequential calls at one depth: each entry finds the previous one gone already.
    for _ in 0..3 {
        assert!(t.enter(top, "a").is_empty());
        assert_eq!(t.leave(top).returning, ["a"]);
    }
    assert_eq!(t.asked, 0);
}

#[test]
fn recursion_ten_thousand_deep_pairs_every_exit_with_its_own_entry() {
    let mut t = Thread::new();
    let top = MAIN.1 - 0x100;
    for depth in 0..10_000u64 {
        assert!(t.enter(top - 0x30 * depth, depth).is_empty());
    }
    for depth in (0..10_000u64).rev() {
        assert_eq!(t.leave(top - 0x30 * depth), left(&[], &[depth]));
    }
    assert!(t.is_empty());
    assert_eq!(t.asked, 0);
}

#[test]
fn longjmp_past_probed_frames_drops_them_as_abandoned_at_the_next_exit_or_entry() {
    let mut t = Thread::new();
    let top = MAIN.1 - 0x100;
    t.enter(top, "outer");
    t.enter(top - 0x40, "mid");
    t.enter(top - 0x80, "inner");
    // inner longjmps back into outer, which returns.
    assert_eq!(t.leave(top), left(&["inner", "mid"], &["outer"]));
    // An exception thrown from deep frames and caught in `catcher`, which calls again on the
    // word of a dead frame: that frame and those nested in it are stale.
    t.enter(top, "catcher");
    t.enter(top - 0x40, "thrower");
    t.enter(top - 0x70, "deeper");
    assert_eq!(t.enter(top - 0x40, "again"), [("deeper", false), ("thrower", false)]);
    assert_eq!(t.leave(top - 0x40).returning, ["again"]);
    // Caught again, and a call on another word: the dead frames wait for the next exit above
    // them.
    t.enter(top - 0x40, "thrower");
    t.enter(top - 0x70, "deeper");
    assert!(t.enter(top - 0x20, "other").is_empty());
    assert_eq!(t.leave(top - 0x20), left(&[], &["other"]));
    assert_eq!(t.leave(top), left(&["deeper", "thrower"], &["catcher"]));
}

#[test]
fn an_alternate_signal_stack_above_the_interrupted_frames_leaves_them_alone() {
    let mut t = Thread::new();
    let top = MAIN.1 - 0x100;
    t.enter(top, "main-a");
    t.enter(top - 0x40, "main-b");
    // A signal handler on the alternate stack (higher) recurses through the same function.
    // An alternate stack higher in the thread's own mapping pairs the same way: entries judge
    // nothing below them.
    let alt = ALT.1 - 0x200;
    assert!(t.enter(alt, "alt-1").is_empty(), "the main frames are on another stack");
    assert!(t.enter(alt - 0x40, "alt-2").is_empty());
    assert_eq!(t.leave(alt - 0x40), left(&[], &["alt-2"]));
    assert_eq!(t.leave(alt), left(&[], &["alt-1"]));
    // An exit with no entry (a call made before the probe was placed) drops nothing either.
    assert_eq!(t.leave(alt + 0x40), left(&[], &[]));
    assert_eq!(t.leave(top - 0x40).returning, ["main-b"]);
    assert_eq!(t.leave(top).returning, ["main-a"]);
    assert!(t.asked > 0);
}

#[test]
fn a_tail_call_hands_the_callers_return_to_the_callee_on_the_same_word() {
    let mut t = Thread::new();
    let sp = MAIN.1 - 0x100;
    t.enter(sp + 0x40, "caller");
    t.enter(sp, "outer");
    // outer: jmp mid; mid: jmp inner; inner: ret. All three on one word.
    let (stale, handed) = t.hand_over(sp);
    assert_eq!((stale, handed.copied()), (vec![], Some("outer")));
    assert!(t.enter(sp, "mid").is_empty(), "the callee's entry keeps the caller");
    assert_eq!(t.hand_over(sp).1.copied(), Some("mid"));
    assert!(t.enter(sp, "inner").is_empty());
    assert_eq!(t.leave(sp), left(&[], &["inner", "mid", "outer"]));
    assert_eq!(t.leave(sp + 0x40), left(&[], &["caller"]));
    // The callee never returns (an exception unwound it): the next call on the word makes it
    // stale, and the caller that was to return with it, which says it was handed over.
    t.enter(sp, "outer");
    t.hand_over(sp);
    t.enter(sp, "callee");
    let gone = t.enter(sp, "after");
    assert_eq!(gone, [("callee", false), ("outer", true)], "the call on the word is replaced, with its caller");
    assert_eq!(t.leave(sp), left(&[], &["after"]));
    // A tail call into a function whose returns are not watched: the handed-over activation
    // is kept by the next entry on its word (taken for its callee's), and returns with it.
    t.enter(sp, "outer");
    t.hand_over(sp);
    assert!(t.enter(sp, "next-call").is_empty());
    assert_eq!(t.leave(sp), left(&[], &["next-call", "outer"]));
    t.enter(sp, "outer");
    t.hand_over(sp);
    assert_eq!(t.asked, 0, "no stale activation so far: no stack asked");
    assert_eq!(t.leave(sp + 0x40), Left { stale: vec![("outer", true)], returning: vec![] });
}

#[test]
fn an_entry_on_a_word_still_held_by_an_activation_replaces_it() {
    // The exit of the first call was not seen (the function left through code that is not one
    // of its exits, e.g. a noreturn call that did return): the next call on the same word
    // makes it stale.
    let mut t = Thread::new();
    let sp = MAIN.1 - 0x100;
    t.enter(sp, 1);
    assert_eq!(t.enter(sp, 2), [(1, false)]);
    assert_eq!(t.leave(sp), left(&[], &[2]));
}

#[test]
fn coroutines_switching_stacks_each_find_their_own_activations_above_or_below() {
    // Two coroutine stacks, each with a call pending, the other's pushed last: the one resumed
    // first returns past the other's, whichever stack lies higher; none is dropped.
    for (first, second) in [(MAIN, ALT), (ALT, MAIN)] {
        let mut t = Thread::new();
        let (a, b) = (first.1 - 0x100, second.1 - 0x100);
        t.enter(a, "a");
        t.enter(a - 0x40, "a2");
        t.enter(b, "b");
        assert_eq!(t.leave(a - 0x40), left(&[], &["a2"]));
        assert_eq!(t.leave(a), left(&[], &["a"]));
        assert_eq!(t.leave(b), left(&[], &["b"]));
        assert!(t.is_empty());
    }
}

/// Two stacks that an engine's memory of the mappings names alike (one stack was unmapped and
/// the other mapped where it was), told apart when looked at afresh.
struct OutOfDate;

impl StackNames for OutOfDate {
    fn stack_of(&mut self, _: u64) -> u64 {
        1
    }
    fn same_stack(&mut self, a: u64, b: u64) -> bool {
        let stack = |addr: u64| [MAIN, ALT].into_iter().find(|(lo, end)| (*lo..*end).contains(&addr));
        stack(a) == stack(b)
    }
}

#[test]
fn stacks_named_alike_from_an_out_of_date_memory_are_told_apart_afresh() {
    let (main, alt) = (MAIN.1 - 0x100, ALT.1 - 0x100);
    // The other stack's activation, below the one leaving by address: not stale.
    let mut acts = ActivationStack::default();
    for (sp, name) in [(alt, "alt"), (main - 0x40, "main")] {
        acts.enter(sp, name, &mut OutOfDate);
    }
    assert_eq!(acts.leave(alt, &mut OutOfDate), left(&[], &["alt"]));
    // The other stack's activation, above the one leaving by address: no outer frame that
    // ends the search before it.
    let mut acts = ActivationStack::default();
    for (sp, name) in [(main, "main"), (alt, "alt")] {
        acts.enter(sp, name, &mut OutOfDate);
    }
    assert_eq!(acts.leave(main, &mut OutOfDate), left(&[], &["main"]));
    // One stack after all: the rule as ever.
    let mut acts = ActivationStack::default();
    for (sp, name) in [(main, "a"), (main - 0x40, "b"), (main - 0x80, "c")] {
        acts.enter(sp, name, &mut OutOfDate);
    }
    assert_eq!(acts.leave(main - 0x40, &mut OutOfDate), left(&["c"], &["b"]));
}

/// Counts the questions asked afresh.
struct Fresh(usize);

impl StackNames for Fresh {
    fn stack_of(&mut self, _: u64) -> u64 {
        1
    }
    fn same_stack(&mut self, _: u64, _: u64) -> bool {
        self.0 += 1;
        true
    }
}

#[test]
fn an_exit_whose_entry_was_not_kept_asks_nothing_afresh_of_an_outer_frame() {
    let main = MAIN.1 - 0x100;
    let mut acts = ActivationStack::default();
    let mut fresh = Fresh(0);
    acts.enter(main, "outer", &mut fresh);
    // A nested call whose entry was vetoed (or missed) leaves: nothing pairs with it.
    assert_eq!(acts.leave(main - 0x40, &mut fresh), left(&[], &[]));
    assert_eq!(fresh.0, 0, "no question for the common outer frame");
    assert_eq!(acts.leave(main, &mut fresh), left(&[], &["outer"]));
}
