//! A `static inline` function of a header, included by two files of one program: a probe on
//! it by name, and one on its body's line (`inline_units.h:LINE`), reach every copy in both
//! files (inlined at -O2, one out-of-line copy per file at -O0) and count exactly the calls the
//! program counts itself, from its three call sites.
mod common;

use common::{hits, trace_to_file};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn program(cc: &str, opt: &str) -> &'static str {
    let b = format!("{FIXTURES}/inline_units_b.c");
    let name = format!("inline_units-{cc}{opt}");
    dprobe_test_fixtures::c_program_by(cc, &format!("{FIXTURES}/inline_units_a.c"), &name, &["-g", opt, &b])
}

fn body_line() -> usize {
    let header = include_str!("fixtures/inline_units.h");
    1 + header.lines().position(|l| l.contains("BUMP_BODY")).expect("the header marks the body")
}

/// `dprobe trace -c SPECS -- PROGRAM 4`: (the program's own count of calls, the summary).
fn run(prog: &str, specs: &[String], name: &str) -> (u64, String) {
    let mut args = vec!["--engine", "ptrace", "-c"];
    args.extend(specs.iter().map(String::as_str));
    args.extend(["--", prog, "4"]);
    let t = trace_to_file(name, &args);
    assert_eq!(t.code, Some(0), "{}\n{}", t.stderr, t.trace);
    let calls = t.stdout.trim().strip_prefix("bumps=").unwrap_or_else(|| panic!("{}", t.stdout)).parse().unwrap();
    (calls, t.trace)
}

#[test]
fn a_header_function_is_probed_in_every_file_that_has_a_copy() {
    // clang -O2 unrolls the loops that call `bump`, and keeps one inlined entry for all the
    // passes of each (its first address before the loop): each pass is a copy of its own.
    for (cc, opt) in [("gcc", "-O2"), ("gcc", "-O0"), ("clang", "-O0"), ("clang", "-O2")] {
        let prog = program(cc, opt);
        let line = format!("{prog}:inline_units.h:{}", body_line());
        let function = format!("{prog}:bump");
        let (calls, summary) = run(prog, &[line.clone(), function.clone()], &format!("inline-units-{cc}{opt}"));
        assert_eq!(calls, 12, "{cc} {opt}: 4 + 2 + 6 calls");
        assert_eq!(hits(&summary, &line), calls, "{cc} {opt}: the body's line\n{summary}");
        assert_eq!(hits(&summary, &function), calls, "{cc} {opt}: the function\n{summary}");
        let sites = summary.lines().find(|l| l.starts_with(&function)).unwrap_or_default();
        assert!(sites.contains(" sites)"), "{cc} {opt}: one site per copy\n{summary}");
    }
}
