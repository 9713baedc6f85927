//! `dprobe trace` with return probes on functions a C++ exception goes through.
mod common;

use common::{hits, throws, trace};

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_program_throwing_through_return_probes_runs_as_untraced() {
    let probes = ["inner%return", "middle%return", "outer%return"];
    let mut args = vec!["--count"];
    args.extend(probes);
    // A `+` in a library's name is part of the name.
    args.extend(["libstdc++:__cxa_throw", "--", throws(), "90"]);
    let (code, out) = trace("throws", &args);
    assert_eq!(code, Some(0), "no terminate, every result right\n{out}");
    let counts: Vec<_> = probes.iter().map(|p| (hits(&out, p), returns(&out, p))).collect();
    assert_eq!(counts, [(90, 60), (90, 60), (90, 90)], "{out}");
    assert!(out.contains("inner%return: 30 returns not seen"), "the unwound calls are told\n{out}");
    assert_eq!(hits(&out, "libstdc++:__cxa_throw"), 30, "one throw every third call\n{out}");
}
