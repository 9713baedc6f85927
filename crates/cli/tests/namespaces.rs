//! Programs in namespaces of their own.
//!
//! In a pid namespace (`unshare --pid --fork`, a container's), their agent numbers them as
//! their namespace does, and those numbers name other processes in dprobe's (1 is its
//! `init`): a child that asks before its `exec` is found by the ids it gave among the
//! processes the program forked, and followed; nothing else is touched. In a network
//! namespace (`unshare --net`, `ip netns exec`), dprobe's listener for the agent of each
//! program is bound where that agent can find it. A program entering a new user namespace
//! must be alone in its process: the agent leaves it, and comes back at its next `exec`.
mod common;

use common::{family, hits, trace};

/// Whether this machine lets `unshare` make namespaces with `args` here (as root).
fn allowed(args: &[&str]) -> bool {
    std::process::Command::new("unshare").args(args).arg("true").status().is_ok_and(|s| s.success())
}

#[test]
fn children_in_a_pid_namespace_are_followed_into_their_programs() {
    if !allowed(&["--pid", "--fork"]) {
        eprintln!("skipped: `unshare --pid --fork` is not allowed here");
        return;
    }
    // `sh` is process 1 of the new namespace; the two programs it runs are its children 2
    // and 3, which ask by those numbers before their `exec`.
    let script = format!("{f} calls 7 && {f} calls 5", f = family());
    for engine in ["agent", "ptrace"] {
        let args =
            ["--engine", engine, "--count", "family:work", "--", "unshare", "--pid", "--fork", "sh", "-c", &script];
        let (code, out) = trace(&format!("pid-namespace-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "family:work"), 12, "{engine}: both programs' calls\n{out}");
        assert!(!out.contains("could not be watched") && !out.contains("not traced"), "{engine}\n{out}");
    }
}

#[test]
fn programs_in_a_network_namespace_are_followed_into_their_programs() {
    if !allowed(&["--net"]) {
        eprintln!("skipped: `unshare --net` is not allowed here");
        return;
    }
    // The shell and both programs are in the new namespace: each gets an agent there.
    let script = format!("{f} calls 7 && ({f} calls 5)", f = family());
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "family:work", "--", "unshare", "--net", "sh", "-c", &script];
        let (code, out) = trace(&format!("net-namespace-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "family:work"), 12, "{engine}: both programs' calls\n{out}");
        assert!(!out.contains("could not be loaded") && !out.contains("not traced"), "{engine}\n{out}");
    }
}

#[test]
fn a_program_enters_a_new_user_namespace_and_the_program_it_executes_is_traced() {
    if !allowed(&["--user"]) {
        eprintln!("skipped: `unshare --user` is not allowed here");
        return;
    }
    let script = format!("{f} calls 7", f = family());
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "family:work", "--", "unshare", "--user", "sh", "-c", &script];
        let (code, out) = trace(&format!("user-namespace-{engine}"), &args);
        // `unshare` failed (`EINVAL`: the agent's thread made the process threaded) before.
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "family:work"), 7, "{engine}: the program the shell executes\n{out}");
        if engine == "agent" {
            assert!(out.contains("entered a new user namespace"), "said\n{out}");
        }
    }
}
