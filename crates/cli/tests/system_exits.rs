//! `dprobe trace --system-wide` with return probes the kernel engine watches at the function's
//! exits (a uprobe at its entry and at each `ret` and tail call, paired by the stack pointer):
//! tail calls, C++ exceptions and recursion deeper than the kernel's return probes watch (64
//! per thread) give the program's own result and exact figures.
mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::{hits, trace_to_file};

/// The kernel's event files are compared by other system tests: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kernel_returns MODE N` (its source says what it does).
fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel_returns.cpp");
    let path = dprobe_test_fixtures::c_program_by("g++", src, "kernel_returns", &["-O2"]);
    Box::leak(std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned().into_boxed_str())
}

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// What the program prints untraced.
fn untraced(args: &[&str]) -> String {
    let o = Command::new(program()).args(args).output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

/// The values of `function`'s return events, in order.
fn returned(trace: &str, function: &str) -> Vec<i64> {
    let marker = format!(" {function} returns ");
    trace.lines().filter_map(|l| l.split_once(&marker)).map(|(_, v)| v.trim().parse().unwrap()).collect()
}

#[test]
fn a_tail_call_pair_returns_both_with_the_callee_value() {
    let _x = exclusive();
    let p = program();
    let (caller, callee) = (format!("{p}:caller%return r=$retval:s32"), format!("{p}:callee%return r=$retval:s32"));
    let t = trace_to_file("system-exits-tail", &["-a", "-v", &caller, &callee, "--", p, "tail", "100"]);
    assert_eq!(t.code, Some(0), "{}", t.what("tail"));
    assert_eq!(t.stdout, untraced(&["tail", "100"]));
    let expected: Vec<i64> = (1..=100).map(|i| 3 * i).collect();
    assert_eq!(returned(&t.trace, "caller"), expected, "{}", t.what("caller"));
    assert_eq!(returned(&t.trace, "callee"), expected, "{}", t.what("callee"));
    let all = format!("{}{}", t.stderr, t.trace);
    assert!(all.contains("its returns are watched at its 1 exit (ret, tail calls)"), "{all}");
}

#[test]
fn an_exception_through_return_probed_frames_leaves_the_program_as_untraced() {
    let _x = exclusive();
    let p = program();
    let probes = [format!("{p}:through%return"), format!("{p}:thrower%return")];
    let t = trace_to_file("system-exits-throw", &["-a", "-c", &probes[0], &probes[1], "--", p, "throw", "90"]);
    assert_eq!(t.code, Some(0), "no terminate\n{}", t.what("throw"));
    assert_eq!(t.stdout, untraced(&["throw", "90"]), "the program's own result");
    for probe in &probes {
        assert_eq!((hits(&t.trace, probe), returns(&t.trace, probe)), (90, 60), "{}", t.what(probe));
    }
    assert!(t.trace.contains("30 entries left without returning"), "the unwound calls are told\n{}", t.trace);
}

#[test]
fn recursion_far_deeper_than_the_kernel_watches_returns_is_counted_exactly() {
    let _x = exclusive();
    let p = program();
    let probe = format!("{p}:deep%return");
    let t = trace_to_file("system-exits-deep", &["-a", "-c", &probe, "--", p, "deep", "10000"]);
    assert_eq!(t.code, Some(0), "{}", t.what("deep"));
    assert_eq!(t.stdout, untraced(&["deep", "10000"]));
    assert_eq!((hits(&t.trace, &probe), returns(&t.trace, &probe)), (10_001, 10_001), "{}", t.trace);
    assert!(!t.trace.contains("without a return"), "{}", t.trace);
}
