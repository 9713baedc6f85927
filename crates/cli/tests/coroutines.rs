//! Coroutines that switch stacks by themselves (`swapcontext`), with calls pending on each
//! stack: every engine that runs in user space pairs each return with its own call, as the
//! kernel engine does (`system_exits.rs`).
mod common;

use std::process::Command;

use common::{hits, kernel_returns, missed, returns, trace_to_file};

#[test]
fn coroutines_with_calls_pending_on_each_stack_return_exactly_in_each_engine() {
    let p = kernel_returns();
    let probe = format!("{p}:co_rec%return");
    // 10 rounds of two coroutines 100 deep: the first resumed returns while the second's
    // frames, on a stack above or below its own, are the latest pending.
    for engine in ["ptrace", "agent"] {
        for place in ["higher", "lower"] {
            let args = ["coro", "10", "100", place];
            let untraced = Command::new(p).args(args).output().unwrap();
            assert!(untraced.status.success());
            let mut all = vec!["--engine", engine, "-c", &probe, "--", p];
            all.extend_from_slice(&args);
            let t = trace_to_file("coroutines", &all);
            assert_eq!(t.code, Some(0), "{}", t.what(engine));
            assert_eq!(t.stdout.as_bytes(), untraced.stdout, "the program's own result");
            assert_eq!(hits(&t.trace, &probe), 2020, "{engine} {place}\n{}", t.trace);
            let figures = (returns(&t.trace, &probe), missed(&t.trace, &probe));
            assert_eq!(figures, (2020, 0), "{engine} {place}\n{}", t.trace);
            assert!(!t.trace.contains("not seen"), "{engine} {place}\n{}", t.trace);
        }
    }
}

/// The same coroutines with their stacks mapped again ten times, where other mappings were:
/// a memory of the process's mappings goes out of date, and one stale mapping may span both
/// new stacks. Each engine looks afresh before it judges a call by two stacks named alike.
#[test]
fn coroutine_stacks_mapped_again_where_other_mappings_were_return_exactly() {
    let p = kernel_returns();
    let probe = format!("{p}:co_rec%return");
    let args = ["coro-remapped", "10", "100"];
    let untraced = Command::new(p).args(args).output().unwrap();
    assert!(untraced.status.success());
    for engine in ["ptrace", "agent"] {
        let mut all = vec!["--engine", engine, "-c", &probe, "--", p];
        all.extend_from_slice(&args);
        let t = trace_to_file("coroutines-remapped", &all);
        assert_eq!(t.code, Some(0), "{}", t.what(engine));
        assert_eq!(t.stdout.as_bytes(), untraced.stdout, "the program's own result");
        let figures = (hits(&t.trace, &probe), returns(&t.trace, &probe), missed(&t.trace, &probe));
        assert_eq!(figures, (20_200, 20_200, 0), "{engine}\n{}", t.trace);
        assert!(!t.trace.contains("not seen"), "{engine}\n{}", t.trace);
    }
}
