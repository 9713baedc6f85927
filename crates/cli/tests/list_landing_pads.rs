//! `dprobe list FILE PLACE` on the padding before a C++ exception's landing pad: the place can
//! be probed, but not with a jump, whose bytes would cover the pad where a throw resumes.
mod common;

use common::dprobe;

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../test-fixtures/src/landing_pads.cpp");

#[test]
fn list_says_a_jump_would_cover_a_landing_pad() {
    let flags = ["-O2", "-falign-labels=8", "-DFX_SUFFIX=_o2", "-shared", "-fPIC"];
    let library = dprobe_test_fixtures::c_program_by("g++", SOURCE, "landing_pads_o2.so", &flags);
    // Somewhere in the copies (the padding before the pad takes every length from 0 to 7), a
    // place 1-4 bytes before a landing pad.
    let places = (0..8).flat_map(|k| (0..0x40).map(move |offset| format!("fxeh_catch_o2_{k}+{offset:#x}")));
    let mut found = None;
    for place in places {
        let o = dprobe(&["list", library, &place]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out.contains("is an exception landing pad") {
            found = Some((place, out));
            break;
        }
    }
    let (place, out) = found.expect("a place whose jump would cover a landing pad");
    assert!(out.contains("can be probed"), "{place}: {out}");
    assert!(out.contains("; in process, not jump-optimized: 0x"), "{place}: {out}");
    assert!(out.contains("(a throw through the calls from 0x"), "{place}: {out}");
    // The pad named is inside the jump's five bytes: 1-4 bytes after the place.
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let at = hex(out.split_whitespace().next().unwrap());
    let pad = hex(out.split("not jump-optimized: ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap());
    assert!((1..=4).contains(&(pad - at)), "{place}: {out}");
}
