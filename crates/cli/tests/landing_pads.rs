//! The padding before a C++ exception's landing pad: the place can be probed, but not with a
//! jump, whose bytes would cover the pad where a throw resumes. `dprobe list` says so, and the
//! agent keeps such a probe on `int3` while threads throw through the function, the program's
//! output that of an untraced run.
mod common;

use common::{dprobe, trace_to_file};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const COPIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../test-fixtures/src/landing_pads.cpp");
/// The copies' flags: `-O2`, landing pads aligned to 8 bytes.
const FLAGS: [&str; 3] = ["-O2", "-falign-labels=8", "-DFX_SUFFIX=_o2"];

/// The copies as a shared library.
fn library() -> &'static str {
    let flags = [&FLAGS[..], &["-shared", "-fPIC"]].concat();
    dprobe_test_fixtures::c_program_by("g++", COPIES, "landing_pads_o2.so", &flags)
}

/// `landing_pads N`: three threads calling the copies (odd arguments throw).
fn program() -> &'static str {
    let flags = [&FLAGS[..], &["-pthread", COPIES]].concat();
    dprobe_test_fixtures::c_program_by("g++", &format!("{FIXTURES}/landing_pads_main.cpp"), "landing_pads", &flags)
}

/// A place in `file`'s copies 1-4 bytes before a landing pad (the padding before the pad
/// takes every length from 0 to 7 in the copies), with what `dprobe list` says of it. The pads
/// are read from the file's exception tables; a place is an instruction's start when `dprobe
/// list` says it can be probed.
fn place_before_a_landing_pad(file: &str) -> (String, String) {
    let pads = dprobe_sym::landing_pads(&std::fs::read(file).unwrap()).expect("the exception tables");
    let symbols = dprobe_sym::Symbols::load_file(file).unwrap();
    // The copies, not their `.cold` parts.
    let mut copies: Vec<_> =
        symbols.functions().iter().filter(|f| f.name.starts_with("fxeh_catch_o2_") && !f.name.contains('.')).collect();
    copies.dedup_by_key(|f| f.start);
    assert_eq!(copies.len(), 8, "the copies: {copies:?}");
    let places = pads.iter().flat_map(|p| (1..=4).map(move |d| p.pad.0 - d)).filter_map(|at| {
        let f = copies.iter().find(|f| (f.start.0..f.start.0 + f.size).contains(&at))?;
        Some(format!("{}+{:#x}", f.name, at - f.start.0))
    });
    places
        .map(|place| {
            let out = String::from_utf8_lossy(&dprobe(&["list", file, &place]).stdout).into_owned();
            (place, out)
        })
        .find(|(_, out)| out.contains("can be probed"))
        .expect("an instruction 1-4 bytes before a landing pad")
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn list_says_a_jump_would_cover_a_landing_pad() {
    let (place, out) = place_before_a_landing_pad(library());
    assert!(out.contains("; in process, not jump-optimized: 0x"), "{place}: {out}");
    assert!(out.contains("is an exception landing pad"), "{place}: {out}");
    assert!(out.contains("(a throw through the calls from 0x"), "{place}: {out}");
    // The pad named is inside the jump's five bytes: 1-4 bytes after the place.
    let at = hex(out.split_whitespace().next().unwrap());
    let pad = hex(out.split("not jump-optimized: ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap());
    assert!((1..=4).contains(&(pad - at)), "{place}: {out}");
}

/// What each copy returns: 3x for an even x, -x for an odd one (thrown and caught).
fn expected(x: i64) -> i64 {
    if x % 2 == 0 {
        3 * x
    } else {
        -x
    }
}

#[test]
fn the_agent_keeps_a_probe_before_a_landing_pad_on_int3_and_throws_resume_there() {
    const CALLS: i64 = 200;
    let program = program();
    let (place, _) = place_before_a_landing_pad(program);
    let function = place.split('+').next().unwrap().to_owned();
    let untraced = std::process::Command::new(program).arg(CALLS.to_string()).output().unwrap();
    let printed: String = (0..3)
        .map(|t| format!("thread {t}: {}\n", (0..8 * CALLS).map(|i| expected(t * 1000 + i % CALLS)).sum::<i64>()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&untraced.stdout), printed, "untraced");

    let calls = CALLS.to_string();
    let args = ["-v", "--engine", "agent", "--count", &function, &place, "--", program, &calls];
    let t = trace_to_file("agent-landing-pads", &args);
    assert_eq!(t.code, Some(0), "{}", t.what(&place));
    assert_eq!(t.stdout, printed, "the program's output is that of an untraced run\n{}", t.what(&place));
    assert!(t.stderr.contains(&format!("dprobe: `{function}`: jump-optimized (no trap)")), "{}", t.stderr);
    let refused = format!("dprobe: `{place}`: on int3, a trap per hit: 0x");
    assert!(t.stderr.contains(&refused) && t.stderr.contains("is an exception landing pad"), "{}", t.stderr);
    // The entry runs once a call; the padding never runs.
    assert_eq!(common::hits(&t.trace, &function), (3 * CALLS) as u64, "{}", t.trace);
    assert_eq!(common::hits(&t.trace, &place), 0, "{}", t.trace);
}
