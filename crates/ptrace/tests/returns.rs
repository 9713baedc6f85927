//! Return probes in another process: exact counts, return values and entry arguments,
//! `maxactive` and missed entries, frames abandoned by `longjmp`, threads.
mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{assert_mode, counter, in_mode, target, Mode};
use dprobe_ptrace::{Exit, HitKind, ProbeDef, Tracee};

#[test]
fn every_return_of_eight_threads_is_seen_with_its_value() {
    for mode in [Mode::Exits, Mode::Trampoline] {
        eight_threads(mode);
    }
}

fn eight_threads(mode: Mode) {
    let mut t = Tracee::spawn(target(), &["threads", "8", "20000"]).unwrap();
    t.run_to_entry().unwrap();
    let wrong = Rc::new(RefCell::new(0u64));
    let w = wrong.clone();
    let def = ProbeDef::on_return(
        "probed",
        Box::new(move |hit| {
            let HitKind::Return { entry_regs, .. } = hit.kind else { panic!("a return") };
            // probed(x) returns 2x + 1: the value matches the argument seen at entry.
            if hit.regs.rax != 2 * entry_regs.rdi + 1 {
                *w.borrow_mut() += 1;
            }
        }),
    );
    let p = t.add(in_mode(def, mode)).unwrap();
    assert_mode(&t, p, mode);
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the program computed its results correctly");
    let s = t.stats(p);
    assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (160_000, 160_000, 0, 0));
    assert_eq!(*wrong.borrow(), 0, "every return value matched its entry argument");
}

#[test]
fn maxactive_limits_pending_returns_and_counts_the_rest_as_missed() {
    for mode in [Mode::Exits, Mode::Trampoline] {
        maxactive(mode);
    }
}

fn maxactive(mode: Mode) {
    let mut t = Tracee::spawn(target(), &["recurse", "10"]).unwrap();
    t.run_to_entry().unwrap();
    let values = Rc::new(RefCell::new(Vec::new()));
    let v = values.clone();
    let (entries, on_entry) = counter();
    let def = ProbeDef::on_return("recurse", Box::new(move |hit| v.borrow_mut().push(hit.regs.rax)))
        .with_entry(on_entry)
        .maxactive(4);
    let p = t.add(in_mode(def, mode)).unwrap();
    assert_mode(&t, p, mode);
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the recursion computed its depth correctly");
    let s = t.stats(p);
    assert_eq!((s.hits, s.returns, s.missed), (11, 4, 7), "the 4 outermost of 11 calls are watched");
    assert_eq!(entries.load(std::sync::atomic::Ordering::Relaxed), 11, "the entry handler runs at every entry");
    assert_eq!(*values.borrow(), vec![7, 8, 9, 10], "innermost watched call returns first");
}

#[test]
fn frames_abandoned_by_longjmp_are_dropped_and_later_returns_still_work() {
    for mode in [Mode::Exits, Mode::Trampoline] {
        longjmp(mode);
    }
}

fn longjmp(mode: Mode) {
    let mut t = Tracee::spawn(target(), &["longjmp", "50"]).unwrap();
    t.run_to_entry().unwrap();
    let def = ProbeDef::on_return("escape", Box::new(|_| panic!("escape never returns")));
    let escape = t.add(in_mode(def, mode)).unwrap();
    let (returns, h) = counter();
    let probed = t.add(in_mode(ProbeDef::on_return("probed", h), mode)).unwrap();
    assert_mode(&t, escape, mode);
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the program's longjmps landed where they should");
    let s = t.stats(escape);
    assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (50, 0, 0, 50));
    assert_eq!(returns.load(std::sync::atomic::Ordering::Relaxed), 50);
    assert_eq!(t.stats(probed).returns, 50);
}

#[test]
fn a_return_probe_must_be_on_a_function_entry() {
    let mut t = Tracee::spawn(target(), &["exit", "0"]).unwrap();
    t.run_to_entry().unwrap();
    let addr = t.resolve("probed").unwrap();
    let before = t.read_code(addr, 16).unwrap();
    let insn_len = dprobe_arch::analyze(&before, addr, addr).unwrap().len as u64;
    let (_, h) = counter();
    let e = t.add(ProbeDef::on_return(&format!("probed+{insn_len}"), h)).expect_err("refused");
    assert!(e.to_string().contains("not the first instruction of a function"), "{e}");
    assert_eq!(t.read_code(addr, 16).unwrap(), before, "nothing patched");
    assert_eq!(t.run().unwrap(), Exit::Code(0));
}

/// The same rules for returns that do not stop the thread (return stubs).
mod without_a_stop {
    use super::*;

    #[test]
    fn every_return_of_eight_threads_is_recorded_with_its_value() {
        let mut t = Tracee::spawn(target(), &["threads", "8", "20000"]).unwrap();
        t.run_to_entry().unwrap();
        let wrong = Rc::new(RefCell::new((0u64, 0u64)));
        let w = wrong.clone();
        let p = t
            .add(
                ProbeDef::on_return(
                    "probed",
                    Box::new(move |hit| {
                        let HitKind::Return { entry_regs, elapsed, .. } = hit.kind else { panic!("a return") };
                        let mut w = w.borrow_mut();
                        w.0 += u64::from(hit.regs.rax != 2 * entry_regs.rdi + 1);
                        w.1 += u64::from(elapsed.is_zero() || elapsed.as_secs() > 10);
                    }),
                )
                .via_return_address()
                .no_return_stop(),
            )
            .unwrap();
        assert_eq!(t.run().unwrap(), Exit::Code(0), "the program computed its results correctly");
        let s = t.stats(p);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (160_000, 160_000, 0, 0));
        assert_eq!(*wrong.borrow(), (0, 0), "every value matched its argument; every latency was plausible");
    }

    #[test]
    fn maxactive_and_missed() {
        let mut t = Tracee::spawn(target(), &["recurse", "10"]).unwrap();
        t.run_to_entry().unwrap();
        let values = Rc::new(RefCell::new(Vec::new()));
        let v = values.clone();
        let p = t
            .add(
                ProbeDef::on_return("recurse", Box::new(move |hit| v.borrow_mut().push(hit.regs.rax)))
                    .maxactive(4)
                    .via_return_address()
                    .no_return_stop(),
            )
            .unwrap();
        assert_eq!(t.run().unwrap(), Exit::Code(0));
        let s = t.stats(p);
        assert_eq!((s.hits, s.returns, s.missed), (11, 4, 7));
        assert_eq!(*values.borrow(), vec![7, 8, 9, 10]);
    }

    #[test]
    fn longjmp_abandons_and_later_returns_still_work() {
        let mut t = Tracee::spawn(target(), &["longjmp", "50"]).unwrap();
        t.run_to_entry().unwrap();
        let escape = t
            .add(
                ProbeDef::on_return("escape", Box::new(|_| panic!("never returns")))
                    .via_return_address()
                    .no_return_stop(),
            )
            .unwrap();
        let (returns, h) = counter();
        let probed = t.add(ProbeDef::on_return("probed", h).via_return_address().no_return_stop()).unwrap();
        assert_eq!(t.run().unwrap(), Exit::Code(0));
        let s = t.stats(escape);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (50, 0, 0, 50));
        assert_eq!((returns.load(std::sync::atomic::Ordering::Relaxed), t.stats(probed).returns), (50, 50));
    }
}

/// A return probe whose handler counts returns whose `rax` is not `expected(entry rdi)`.
fn checked(target: &str, expected: fn(u64) -> u64, mode: Mode) -> (ProbeDef, Rc<RefCell<u64>>) {
    let wrong = Rc::new(RefCell::new(0u64));
    let w = wrong.clone();
    let def = ProbeDef::on_return(
        target,
        Box::new(move |hit| {
            let HitKind::Return { entry_regs, .. } = hit.kind else { panic!("a return") };
            *w.borrow_mut() += u64::from(hit.regs.rax != expected(entry_regs.rdi));
        }),
    );
    (in_mode(def, mode), wrong)
}

/// `tail_outer` ends in `jmp tail_inner`, both return-probed: each call returns once from
/// each, with its own value, and the program goes on.
fn tail_calls(outer_mode: Mode, inner_mode: Mode) {
    let mut t = Tracee::spawn(target(), &["tailcall", "1000"]).unwrap();
    t.run_to_entry().unwrap();
    // tail_outer(x) returns tail_inner(x + 1) = 3(x + 1).
    let (outer_def, outer_wrong) = checked("tail_outer", |x| 3 * (x + 1), outer_mode);
    let (inner_def, inner_wrong) = checked("tail_inner", |x| 3 * x, inner_mode);
    let outer = t.add(outer_def).unwrap();
    let inner = t.add(inner_def).unwrap();
    assert_mode(&t, outer, outer_mode);
    assert_mode(&t, inner, inner_mode);
    assert_eq!(t.run().unwrap(), Exit::Code(0), "every tail call returned to the right place");
    for p in [outer, inner] {
        let s = t.stats(p);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (1000, 1000, 0, 0));
    }
    assert_eq!((*outer_wrong.borrow(), *inner_wrong.borrow()), (0, 0), "each return saw its value");
}

#[test]
fn a_tail_call_loop_through_an_unwatched_function_returns_every_activation_where_it_returns() {
    // tail_ping(3) -> tail_pong(3) -> tail_ping(2) -> ... -> tail_ping(0), which returns 7:
    // four activations of tail_ping, each returning 7 to the caller (never at a jump, where
    // rax holds 100 + n).
    for mode in [Mode::Exits, Mode::Trampoline] {
        let mut t = Tracee::spawn(target(), &["tailloop", "200", "3"]).unwrap();
        t.run_to_entry().unwrap();
        let (def, wrong) = checked("tail_ping", |_| 7, mode);
        let ping = t.add(def).unwrap();
        assert_mode(&t, ping, mode);
        assert_eq!(t.run().unwrap(), Exit::Code(0), "{mode:?}: every call returned to the right place");
        let s = t.stats(ping);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (800, 800, 0, 0), "{mode:?}");
        assert_eq!(*wrong.borrow(), 0, "{mode:?}: each return saw its value");
    }
}

#[test]
fn a_tail_call_between_two_return_probed_functions_returns_once_from_each() {
    tail_calls(Mode::Exits, Mode::Exits);
    tail_calls(Mode::Trampoline, Mode::Trampoline);
}

#[test]
fn a_tail_call_between_functions_watched_at_their_exits_and_through_their_return_address() {
    tail_calls(Mode::Exits, Mode::Trampoline);
    tail_calls(Mode::Trampoline, Mode::Exits);
    tail_calls(Mode::Exits, Mode::Stubs);
}

#[test]
fn a_tail_call_between_return_probes_that_do_not_stop() {
    tail_calls(Mode::Stubs, Mode::Stubs);
}

#[test]
fn a_tail_call_from_a_return_that_does_not_stop_into_one_that_does() {
    tail_calls(Mode::Stubs, Mode::Trampoline);
}

/// A signal handler on an alternate stack calls a return-probed function while another waits
/// for the signal: both return, counted, with their values.
fn alternate_stack(place: &str, mode: Mode) {
    let mut t = Tracee::spawn(target(), &["altstack", "200", place]).unwrap();
    t.run_to_entry().unwrap();
    let (outer_def, outer_wrong) = checked("alt_outer", |x| 5 * x + 1, mode);
    let (nested_def, nested_wrong) = checked("alt_nested", |x| 5 * x, mode);
    let outer = t.add(outer_def).unwrap();
    let nested = t.add(nested_def).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the handler and the interrupted function returned correctly");
    for p in [outer, nested] {
        let s = t.stats(p);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (200, 200, 0, 0));
    }
    assert_eq!((*outer_wrong.borrow(), *nested_wrong.borrow()), (0, 0));
}

#[test]
fn an_alternate_signal_stack_above_the_interrupted_frames() {
    alternate_stack("above", Mode::Exits);
    alternate_stack("above", Mode::Trampoline);
}

#[test]
fn an_alternate_signal_stack_above_the_interrupted_frames_without_a_stop() {
    alternate_stack("above", Mode::Stubs);
}

#[test]
fn an_alternate_signal_stack_below_the_interrupted_frames() {
    alternate_stack("below", Mode::Exits);
    alternate_stack("below", Mode::Trampoline);
}

/// An alternate stack inside the thread's own stack mapping, above the frames it interrupts:
/// the stacks cannot be told apart by their mappings, so the interrupted return may be counted
/// as abandoned, but the program still returns correctly and every call is accounted for.
fn alternate_stack_in_the_same_mapping(mode: Mode) {
    let mut t = Tracee::spawn(target(), &["altstack", "200", "own"]).unwrap();
    t.run_to_entry().unwrap();
    let (outer_def, outer_wrong) = checked("alt_outer", |x| 5 * x + 1, mode);
    let (nested_def, nested_wrong) = checked("alt_nested", |x| 5 * x, mode);
    let outer = t.add(outer_def).unwrap();
    let nested = t.add(nested_def).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the handler and the interrupted function returned correctly");
    let s = t.stats(nested);
    assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (200, 200, 0, 0));
    let s = t.stats(outer);
    assert_eq!((s.hits, s.returns + s.abandoned, s.missed), (200, 200, 0), "{s:?}");
    if mode == Mode::Exits {
        assert_eq!(s.returns, 200, "exits are paired on their own word: none is taken for abandoned");
    }
    assert_eq!((*outer_wrong.borrow(), *nested_wrong.borrow()), (0, 0));
}

#[test]
fn an_alternate_signal_stack_in_the_threads_own_stack_mapping() {
    alternate_stack_in_the_same_mapping(Mode::Exits);
    alternate_stack_in_the_same_mapping(Mode::Trampoline);
}

#[test]
fn an_alternate_signal_stack_in_the_threads_own_stack_mapping_without_a_stop() {
    alternate_stack_in_the_same_mapping(Mode::Stubs);
}

/// Recursion 10,000 deep: no default limit on pending returns, none missed.
fn deep_recursion(mode: Mode) {
    let mut t = Tracee::spawn(target(), &["recurse", "10000"]).unwrap();
    t.run_to_entry().unwrap();
    let values = Rc::new(RefCell::new(Vec::new()));
    let v = values.clone();
    let def = ProbeDef::on_return("recurse", Box::new(move |hit| v.borrow_mut().push(hit.regs.rax)));
    let p = t.add(in_mode(def, mode)).unwrap();
    assert_mode(&t, p, mode);
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    let s = t.stats(p);
    assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (10_001, 10_001, 0, 0));
    assert_eq!(*values.borrow(), (0..=10_000).collect::<Vec<u64>>(), "innermost first, each with its value");
}

#[test]
fn recursion_ten_thousand_deep_is_traced_whole() {
    deep_recursion(Mode::Exits);
    deep_recursion(Mode::Trampoline);
}

#[test]
fn recursion_ten_thousand_deep_without_a_stop() {
    deep_recursion(Mode::Stubs);
}

/// A program that checks its own return address (the instruction before it must call the
/// function): with the returns watched at the exits it sees the stack untouched and computes
/// its result; through the return address it would see dprobe's trampoline.
#[test]
fn a_program_reading_its_own_return_address_sees_it_unchanged() {
    let untraced = std::process::Command::new(target()).args(["retaddr", "1000"]).status().unwrap();
    assert_eq!(untraced.code(), Some(0));
    for mode in [Mode::Exits, Mode::Trampoline] {
        let mut t = Tracee::spawn(target(), &["retaddr", "1000"]).unwrap();
        t.run_to_entry().unwrap();
        let (def, wrong) = checked("own_return", |x| x + 1, mode);
        let p = t.add(def).unwrap();
        assert_mode(&t, p, mode);
        let exit = t.run().unwrap();
        let s = t.stats(p);
        match mode {
            Mode::Exits => {
                assert_eq!(exit, Exit::Code(0), "the program saw its own return addresses");
                assert_eq!((s.hits, s.returns, s.abandoned, *wrong.borrow()), (1000, 1000, 0, 0));
            }
            // What the stack-touching mode costs such a program (a wrong result, or a fault
            // reading before the trampoline's page), shown so that it stays known.
            _ => assert_ne!(exit, Exit::Code(0), "the hijacked return address is seen"),
        }
    }
}
