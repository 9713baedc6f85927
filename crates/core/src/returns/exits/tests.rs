//! The rule on simulated threads: entries and exits named by their stack pointers.
use super::*;

const MAIN: (u64, u64) = (0x10_0000, 0x20_0000);
const ALT: (u64, u64) = (0x80_0000, 0x81_0000);

/// Names the stack an address is on, counting the questions.
struct Stacks {
    asked: usize,
}

impl Stacks {
    fn of(&mut self) -> impl FnMut(u64) -> u64 + '_ {
        |addr| {
            self.asked += 1;
            [MAIN, ALT].iter().find(|(lo, end)| (*lo..*end).contains(&addr)).map_or(0, |s| s.1)
        }
    }
}

#[test]
fn nested_calls_leave_innermost_first_and_the_common_path_asks_no_stack() {
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let top = MAIN.1 - 0x100;
    for (k, name) in ["a", "b", "c"].into_iter().enumerate() {
        assert!(t.enter(top - 0x40 * k as u64, name, &mut stacks.of()).is_empty());
    }
    for (k, name) in ["c", "b", "a"].into_iter().enumerate() {
        assert_eq!(t.leave(top - 0x40 * (2 - k as u64), &mut stacks.of()), (vec![], Some(name)));
    }
    assert!(t.is_empty());
    // Sequential calls at one depth: each entry finds the previous one gone already.
    for _ in 0..3 {
        assert!(t.enter(top, "a", &mut stacks.of()).is_empty());
        assert_eq!(t.leave(top, &mut stacks.of()).1, Some("a"));
    }
    assert_eq!(stacks.asked, 0);
}

#[test]
fn recursion_ten_thousand_deep_pairs_every_exit_with_its_own_entry() {
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let top = MAIN.1 - 0x100;
    for depth in 0..10_000u64 {
        assert!(t.enter(top - 0x30 * depth, depth, &mut stacks.of()).is_empty());
    }
    for depth in (0..10_000u64).rev() {
        assert_eq!(t.leave(top - 0x30 * depth, &mut stacks.of()), (vec![], Some(depth)));
    }
    assert!(t.is_empty());
    assert_eq!(stacks.asked, 0);
}

#[test]
fn longjmp_past_probed_frames_drops_them_as_abandoned_at_the_next_exit_or_entry() {
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let top = MAIN.1 - 0x100;
    t.enter(top, "outer", &mut stacks.of());
    t.enter(top - 0x40, "mid", &mut stacks.of());
    t.enter(top - 0x80, "inner", &mut stacks.of());
    // inner longjmps back into outer, which returns.
    assert_eq!(t.leave(top, &mut stacks.of()), (vec!["inner", "mid"], Some("outer")));
    // An exception thrown from deep frames and caught in `catcher`, which calls again: the
    // new call's entry finds the dead frames at or below its stack pointer.
    t.enter(top, "catcher", &mut stacks.of());
    t.enter(top - 0x40, "thrower", &mut stacks.of());
    t.enter(top - 0x70, "deeper", &mut stacks.of());
    assert_eq!(t.enter(top - 0x40, "again", &mut stacks.of()), ["deeper", "thrower"]);
    assert_eq!(t.leave(top - 0x40, &mut stacks.of()).1, Some("again"));
    assert_eq!(t.leave(top, &mut stacks.of()).1, Some("catcher"));
}

#[test]
fn an_alternate_signal_stack_above_the_interrupted_frames_leaves_them_alone() {
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let top = MAIN.1 - 0x100;
    t.enter(top, "main-a", &mut stacks.of());
    t.enter(top - 0x40, "main-b", &mut stacks.of());
    // A signal handler on the alternate stack (higher) recurses through the same function.
    let alt = ALT.1 - 0x200;
    assert!(t.enter(alt, "alt-1", &mut stacks.of()).is_empty(), "the main frames are on another stack");
    assert!(t.enter(alt - 0x40, "alt-2", &mut stacks.of()).is_empty());
    assert_eq!(t.leave(alt - 0x40, &mut stacks.of()), (vec![], Some("alt-2")));
    assert_eq!(t.leave(alt, &mut stacks.of()), (vec![], Some("alt-1")));
    // An exit with no entry (a call made before the probe was placed) drops nothing either.
    assert_eq!(t.leave(alt + 0x40, &mut stacks.of()), (vec![], None));
    assert_eq!(t.leave(top - 0x40, &mut stacks.of()).1, Some("main-b"));
    assert_eq!(t.leave(top, &mut stacks.of()).1, Some("main-a"));
    assert!(stacks.asked > 0);
}

#[test]
fn a_tail_call_leaves_at_the_jump_and_the_callee_enters_on_the_same_word() {
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let sp = MAIN.1 - 0x100;
    t.enter(sp, "outer", &mut stacks.of());
    // outer: jmp inner (an exit site), then inner's entry and ret on the same stack pointer.
    assert_eq!(t.leave(sp, &mut stacks.of()), (vec![], Some("outer")));
    assert!(t.enter(sp, "inner", &mut stacks.of()).is_empty());
    assert_eq!(t.leave(sp, &mut stacks.of()), (vec![], Some("inner")));
    assert!(t.is_empty());
}

#[test]
fn an_entry_on_a_word_still_held_by_an_activation_replaces_it() {
    // The exit of the first call was not seen (the function left through code that is not one
    // of its exits, e.g. a noreturn call that did return): the next call on the same word
    // makes it stale.
    let mut stacks = Stacks { asked: 0 };
    let mut t = ActivationStack::default();
    let sp = MAIN.1 - 0x100;
    t.enter(sp, 1, &mut stacks.of());
    assert_eq!(t.enter(sp, 2, &mut stacks.of()), [1]);
    assert_eq!(t.leave(sp, &mut stacks.of()), (vec![], Some(2)));
}
