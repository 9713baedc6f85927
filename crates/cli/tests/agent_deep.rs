//! The agent engine (dprobe's in-process engine inside the traced program) watches returns with
//! no fixed limit by default: recursion 20,000 deep through a function whose exits cannot all
//! be known (its returns watched through the return address) and 10,000 deep through one
//! watched at its exits, in one thread and in four, count every return and leave the program's
//! own result; `--maxactive` still bounds the returns in flight and says so.
mod common;

use std::process::Command;

use common::{hits, kernel_returns as program, missed, returns, trace_to_file};

/// The RETURNS and MISSED columns of `probe` in a summary table.
fn returns_missed(summary: &str, probe: &str) -> (u64, u64) {
    (returns(summary, probe), missed(summary, probe))
}

/// What the program prints untraced.
fn untraced(args: &[&str]) -> String {
    let o = Command::new(program()).args(args).output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn recursion_through_the_return_address_twenty_thousand_deep_counts_every_return() {
    let p = program();
    let probe = format!("{p}:jumps%return");
    let t = trace_to_file("agent-deep-jumps", &["--engine", "agent", "-v", "-c", &probe, "--", p, "jumps", "20000"]);
    assert_eq!(t.code, Some(0), "{}", t.what("jumps"));
    assert_eq!(t.stdout, untraced(&["jumps", "20000"]), "the program's own result");
    let all = format!("{}{}", t.stderr, t.trace);
    assert!(all.contains("through the return address"), "{all}");
    assert_eq!(hits(&t.trace, &probe), 20_001, "{}", t.trace);
    assert_eq!(returns_missed(&t.trace, &probe), (20_001, 0), "{}", t.trace);
}

#[test]
fn recursion_watched_at_the_exits_in_four_threads_counts_every_return() {
    let p = program();
    let probe = format!("{p}:deep%return");
    let t = trace_to_file(
        "agent-deep-threads",
        &["--engine", "agent", "-c", &probe, "--", p, "threads", "4", "3", "10000"],
    );
    assert_eq!(t.code, Some(0), "{}", t.what("threads"));
    assert_eq!(t.stdout, untraced(&["threads", "4", "3", "10000"]), "the program's own result");
    let calls = 4 * 3 * 10_001;
    assert_eq!(hits(&t.trace, &probe), calls, "{}", t.trace);
    assert_eq!(returns_missed(&t.trace, &probe), (calls, 0), "{}", t.trace);
}

#[test]
fn maxactive_bounds_the_returns_in_flight_and_says_why_the_rest_are_missed() {
    let p = program();
    let probe = format!("{p}:jumps%return");
    let args = ["--engine", "agent", "--maxactive", "64", "-c", &probe, "--", p, "jumps", "1000"];
    let t = trace_to_file("agent-deep-maxactive", &args);
    assert_eq!(t.code, Some(0), "{}", t.what("jumps"));
    assert_eq!(t.stdout, untraced(&["jumps", "1000"]), "the program's own result");
    assert_eq!(hits(&t.trace, &probe), 1001, "{}", t.trace);
    assert_eq!(returns_missed(&t.trace, &probe), (64, 937), "{}", t.trace);
    assert!(t.trace.contains("--maxactive returns were already pending"), "{}", t.trace);
}
