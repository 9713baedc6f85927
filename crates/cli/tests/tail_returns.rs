//! A return probe on a function that leaves by a tail call into a function whose returns are
//! not watched: the function returns where the callee does, and its return is seen there,
//! with the callee's value (not at the jump, where `rax` holds no return value yet), with the
//! ptrace engine and with the agent (the in-process engine inside the program).
mod common;

use common::{dprobe, out_file};
use std::process::Command;

fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel_returns.cpp");
    dprobe_test_fixtures::c_program_by("g++", src, "kernel_returns", &["-O2", "-pthread"])
}

/// The caller's returns as `engine` traces them, with the callee unprobed or probed too.
fn caller_returns(engine: &str, callee_probed: bool) -> Vec<i64> {
    let p = program();
    let untraced = Command::new(p).args(["tail", "100"]).output().unwrap();
    let out = out_file(&format!("tail-unwatched-{engine}-{callee_probed}"));
    let spec = format!("{p}:caller%return r=$retval:s32");
    let callee = format!("{p}:callee%return");
    let mut args = vec!["trace", "--engine", engine, "-o", out.to_str().unwrap(), &spec];
    if callee_probed {
        args.push(&callee);
    }
    args.extend(["--", p, "tail", "100"]);
    let traced = dprobe(&args);
    let trace = std::fs::read_to_string(&out).unwrap();
    assert_eq!(traced.status.code(), Some(0), "{engine}: {trace}");
    assert_eq!(traced.stdout, untraced.stdout, "{engine}: the program's own result");
    trace.lines().filter_map(|l| l.split_once(" caller returns ")).map(|(_, v)| v.trim().parse().unwrap()).collect()
}

#[test]
fn a_tail_call_into_an_unwatched_function_returns_with_the_callees_value() {
    // caller(i) jumps to callee(i + 1), which returns 3 * (i + 1), for i in 0..100.
    let expected: Vec<i64> = (1..=100).map(|i| 3 * i).collect();
    for engine in ["ptrace", "agent"] {
        assert_eq!(caller_returns(engine, false), expected, "{engine}");
    }
}

#[test]
fn a_tail_call_into_a_return_probed_function_returns_with_it() {
    let expected: Vec<i64> = (1..=100).map(|i| 3 * i).collect();
    for engine in ["ptrace", "agent"] {
        assert_eq!(caller_returns(engine, true), expected, "{engine}");
    }
}
