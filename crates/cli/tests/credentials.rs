//! A program that changes its ids keeping its capabilities (`setpriv --reuid`, daemons that
//! drop to a user) with the agent's thread in it: the C library changes every thread's ids
//! and aborts the program when they disagree, so the agent's thread takes on the caller's
//! capabilities first (the agent's `credentials.rs`).
mod common;

use std::process::Command;

use common::{hits, trace_to_file};

fn keeps_caps() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keeps_caps.c");
    dprobe_test_fixtures::c_program(src, "keeps_caps", &["-O2"])
}

/// (As the other tests, run as root: the program drops to nobody.)
#[test]
fn a_program_that_keeps_its_capabilities_across_an_id_change_runs_as_untraced() {
    let untraced = Command::new(keeps_caps()).output().unwrap();
    assert!(untraced.status.success(), "untraced: {}", String::from_utf8_lossy(&untraced.stderr));
    let expected = String::from_utf8(untraced.stdout).unwrap();
    assert_eq!(expected, "uid 65534 gid 65534, root no more\n");
    for engine in ["agent", "ptrace"] {
        let t = trace_to_file(
            &format!("keeps-caps-{engine}"),
            &["--engine", engine, "--count", "libc:setresgid", "libc:setuid", "--", keeps_caps()],
        );
        // Before: killed by SIGABRT at its `setresgid` under the agent (the agent's thread,
        // without the capabilities the program had kept, failed it).
        assert_eq!(t.code, Some(0), "{engine}: {}", t.what("ran to its end"));
        assert_eq!(t.stdout, expected, "{engine}");
        assert_eq!((hits(&t.trace, "libc:setresgid"), hits(&t.trace, "libc:setuid")), (1, 1), "{engine}\n{}", t.trace);
    }
}

/// The same change in a forked child, which keeps the agent: the child's agent thread takes
/// on its capabilities.
#[test]
fn a_forked_child_that_keeps_its_capabilities_across_an_id_change_runs_as_untraced() {
    let t = trace_to_file(
        "keeps-caps-fork",
        &["--engine", "agent", "--count", "libc:setresgid", "--", keeps_caps(), "fork"],
    );
    assert_eq!(t.code, Some(0), "{}", t.what("the child ran right"));
    assert_eq!(t.stdout, "uid 65534 gid 65534, root no more\n");
    assert_eq!(hits(&t.trace, "libc:setresgid"), 1, "{}", t.trace);
}

/// `setpriv` itself (util-linux's, which every Debian system has).
#[test]
fn setpriv_changes_user_under_the_agent() {
    let args = [
        "--engine",
        "agent",
        "--count",
        "libc:setresuid",
        "--",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "id",
        "-u",
    ];
    let t = trace_to_file("setpriv", &args);
    assert_eq!(t.code, Some(0), "{}", t.what("setpriv and id ran"));
    assert_eq!(t.stdout, "65534\n");
}
