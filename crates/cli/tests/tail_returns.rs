//! A return probe on a function that leaves by a tail call into a function whose returns are
//! not watched: the function returns where the callee does, and its return is seen there,
//! with the callee's value (not at the jump, where `rax` holds no return value yet).
mod common;

use common::{dprobe, out_file};
use std::process::Command;

fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel_returns.cpp");
    dprobe_test_fixtures::c_program_by("g++", src, "kernel_returns", &["-O2", "-pthread"])
}

#[test]
fn a_tail_call_into_an_unwatched_function_returns_with_the_callees_value() {
    let p = program();
    let untraced = Command::new(p).args(["tail", "100"]).output().unwrap();
    let out = out_file("tail-unwatched");
    let spec = format!("{p}:caller%return r=$retval:s32");
    let traced = dprobe(&["trace", "--engine", "ptrace", "-o", out.to_str().unwrap(), &spec, "--", p, "tail", "100"]);
    let trace = std::fs::read_to_string(&out).unwrap();
    assert_eq!(traced.status.code(), Some(0), "{trace}");
    assert_eq!(traced.stdout, untraced.stdout, "the program's own result");
    // caller(i) jumps to callee(i + 1), which returns 3 * (i + 1), for i in 0..100.
    let values: Vec<i64> = trace
        .lines()
        .filter_map(|l| l.split_once(" caller returns "))
        .map(|(_, v)| v.trim().parse().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=100).map(|i| 3 * i).collect();
    assert_eq!(values, expected, "{trace}");
}
