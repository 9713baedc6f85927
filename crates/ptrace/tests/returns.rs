//! Return probes in another process: exact counts, return values and entry arguments,
//! `maxactive` and missed entries, frames abandoned by `longjmp`, threads.
mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{counter, target};
use dprobe_ptrace::{Exit, HitKind, ProbeDef, Tracee};

#[test]
fn every_return_of_eight_threads_is_seen_with_its_value() {
    let mut t = Tracee::spawn(target(), &["threads", "8", "20000"]).unwrap();
    t.run_to_entry().unwrap();
    let wrong = Rc::new(RefCell::new(0u64));
    let w = wrong.clone();
    let p = t
        .add(ProbeDef::on_return(
            "probed",
            Box::new(move |hit| {
                let HitKind::Return { entry_regs, .. } = hit.kind else { panic!("a return") };
                // probed(x) returns 2x + 1: the value matches the argument seen at entry.
                if hit.regs.rax != 2 * entry_regs.rdi + 1 {
                    *w.borrow_mut() += 1;
                }
            }),
        ))
        .unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the program computed its results correctly");
    let s = t.stats(p);
    assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (160_000, 160_000, 0, 0));
    assert_eq!(*wrong.borrow(), 0, "every return value matched its entry argument");
}

#[test]
fn maxactive_limits_pending_returns_and_counts_the_rest_as_missed() {
    let mut t = Tracee::spawn(target(), &["recurse", "10"]).unwrap();
    t.run_to_entry().unwrap();
    let values = Rc::new(RefCell::new(Vec::new()));
    let v = values.clone();
    let (entries, on_entry) = counter();
    let p = t
        .add(
            ProbeDef::on_return("recurse", Box::new(move |hit| v.borrow_mut().push(hit.regs.rax)))
                .with_entry(on_entry)
                .maxactive(4),
        )
        .unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the recursion computed its depth correctly");
    let s = t.stats(p);
    assert_eq!((s.hits, s.returns, s.missed), (11, 4, 7), "the 4 outermost of 11 calls are watched");
    assert_eq!(entries.load(std::sync::atomic::Ordering::Relaxed), 11, "the entry handler runs at every entry");
    assert_eq!(*values.borrow(), vec![7, 8, 9, 10], "innermost watched call returns first");
}

#[test]
fn frames_abandoned_by_longjmp_are_dropped_and_later_returns_still_work() {
    let mut t = Tracee::spawn(target(), &["longjmp", "50"]).unwrap();
    t.run_to_entry().unwrap();
    let escape = t.add(ProbeDef::on_return("escape", Box::new(|_| panic!("escape never returns")))).unwrap();
    let (returns, h) = counter();
    let probed = t.add(ProbeDef::on_return("probed", h)).unwrap();
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
        let escape =
            t.add(ProbeDef::on_return("escape", Box::new(|_| panic!("never returns"))).no_return_stop()).unwrap();
        let (returns, h) = counter();
        let probed = t.add(ProbeDef::on_return("probed", h).no_return_stop()).unwrap();
        assert_eq!(t.run().unwrap(), Exit::Code(0));
        let s = t.stats(escape);
        assert_eq!((s.hits, s.returns, s.missed, s.abandoned), (50, 0, 0, 50));
        assert_eq!((returns.load(std::sync::atomic::Ordering::Relaxed), t.stats(probed).returns), (50, 50));
    }
}
