//! The agent is written once, into a sealed memory file of dprobe's, and every program
//! followed that may open it loads that one file (`dprobe_ptrace`'s `shared_image.rs`); a
//! program of another user gets a copy of its own, as before.
mod common;

use std::collections::BTreeSet;

use common::trace_to_file;

/// The inodes of the agent's memory file in each copy of `/proc/self/maps` printed, in order.
fn agent_inodes(maps: &str) -> Vec<u64> {
    maps.lines()
        .filter(|l| l.ends_with("/memfd:dprobe-agent (deleted)") && l.contains(" r-xp "))
        .map(|l| l.split_whitespace().nth(4).and_then(|i| i.parse().ok()).expect("an inode"))
        .collect()
}

/// (As the other tests, run as root: the program drops to nobody.)
#[test]
fn followed_programs_of_dprobe_s_user_load_one_copy_and_another_user_s_its_own() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/as_nobody.c");
    let as_nobody = dprobe_test_fixtures::c_program(src, "as_nobody", &["-O2"]);
    // Three programs executed by a shell (a fourth): two as root, one as nobody.
    let script = format!("cat /proc/self/maps; grep -h . /proc/self/maps; {as_nobody} cat /proc/self/maps; echo done");
    let t = trace_to_file("shared-agent", &["--engine", "agent", "--count", "libc:getenv", "--", "sh", "-c", &script]);
    assert_eq!(t.code, Some(0), "{}", t.what("traced to its end"));
    assert!(t.stdout.ends_with("done\n"), "{}", t.what("the script ran to its end"));
    let inodes = agent_inodes(&t.stdout);
    assert_eq!(inodes.len(), 3, "each program had the agent loaded: {inodes:?}\n{}", t.stdout);
    assert_eq!(inodes[0], inodes[1], "cat and grep, of dprobe's user, load one file");
    assert_ne!(inodes[2], inodes[0], "cat as nobody cannot open dprobe's file: a copy of its own");
    assert_eq!(inodes.iter().collect::<BTreeSet<_>>().len(), 2);
}
