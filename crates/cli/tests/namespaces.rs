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

/// `unshare UNSHARE... sh -c SCRIPT` traced with each engine, counting `family:work`: each
/// ends right with `calls` calls counted; what each printed, the agent's first. `None` where
/// this machine does not let `unshare` make those namespaces.
fn traced_in_namespaces(name: &str, unshare: &[&str], script: &str, calls: u64) -> Option<[String; 2]> {
    if !allowed(unshare) {
        eprintln!("skipped: `unshare {}` is not allowed here", unshare.join(" "));
        return None;
    }
    Some(["agent", "ptrace"].map(|engine| {
        let mut args = vec!["--engine", engine, "--count", "family:work", "--", "unshare"];
        args.extend(unshare);
        args.extend(["sh", "-c", script]);
        let (code, out) = trace(&format!("{name}-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "family:work"), calls, "{engine}: the programs' calls\n{out}");
        out
    }))
}

#[test]
fn children_in_a_pid_namespace_are_followed_into_their_programs() {
    // `sh` is process 1 of the new namespace; the two programs it runs are its children 2
    // and 3, which ask by those numbers before their `exec`.
    let script = format!("{f} calls 7 && {f} calls 5", f = family());
    for out in traced_in_namespaces("pid-namespace", &["--pid", "--fork"], &script, 12).unwrap_or_default() {
        assert!(!out.contains("could not be watched") && !out.contains("not traced"), "{out}");
    }
}

#[test]
fn programs_in_a_network_namespace_are_followed_into_their_programs() {
    // The shell and both programs are in the new namespace: each gets an agent there.
    let script = format!("{f} calls 7 && ({f} calls 5)", f = family());
    for out in traced_in_namespaces("net-namespace", &["--net"], &script, 12).unwrap_or_default() {
        assert!(!out.contains("could not be loaded") && !out.contains("not traced"), "{out}");
    }
}

#[test]
fn a_program_enters_a_new_user_namespace_and_the_program_it_executes_is_traced() {
    // `unshare` failed (`EINVAL`: the agent's thread made the process threaded) before.
    let script = format!("{f} calls 7", f = family());
    if let Some([agent, _]) = traced_in_namespaces("user-namespace", &["--user"], &script, 7) {
        assert!(agent.contains("entered a new user, mount or time namespace"), "said\n{agent}");
    }
}

/// The events of programs in a pid namespace carry the ids dprobe's namespace gives them,
/// as the ptrace engine's do: the namespace's own (1 for its first process, 2, 3...) name
/// other processes there.
#[test]
fn events_in_a_pid_namespace_carry_dprobe_s_ids() {
    if !allowed(&["--pid", "--fork"]) {
        eprintln!("skipped: `unshare --pid --fork` is not allowed here");
        return;
    }
    let script = format!("{f} calls 7 && {f} calls 5", f = family());
    let args = ["--count", "--by", "pid", "family:work", "--", "unshare", "--pid", "--fork", "sh", "-c", &script];
    let (code, out) = trace("pid-namespace-ids", &args);
    assert_eq!(code, Some(0), "{out}");
    let table = out.split("PID").nth(1).unwrap_or_else(|| panic!("no table\n{out}"));
    let rows: Vec<(u32, u64)> = table
        .lines()
        .skip(1)
        .map_while(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    let mut counts: Vec<u64> = rows.iter().map(|r| r.1).collect();
    counts.sort();
    assert_eq!(counts, [5, 7], "one row per program\n{out}");
    // `sh` is 1 in the namespace, the programs 2 and 3: dprobe's ids are its own, and each
    // was a process this trace started.
    let dprobe_s_own = |pid: u32| std::fs::metadata(format!("/proc/{pid}")).is_err() && pid > 3;
    assert!(rows.iter().all(|&(pid, _)| dprobe_s_own(pid)), "{out}");
}

/// `setns` into a mount namespace is for a process alone too (`nsenter --mount`): the agent
/// leaves, and the program `nsenter` executes has one again.
#[test]
fn a_program_joins_a_mount_namespace_and_the_program_it_executes_is_traced() {
    let script = format!("{f} calls 7", f = family());
    let me = std::process::id().to_string();
    for engine in ["agent", "ptrace"] {
        let args =
            ["--engine", engine, "--count", "family:work", "--", "nsenter", "--mount", "-t", &me, "sh", "-c", &script];
        let (code, out) = trace(&format!("mount-namespace-{engine}"), &args);
        // `nsenter` failed (`EINVAL`: the agent's thread made the process threaded) before.
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "family:work"), 7, "{engine}: the program the shell executes\n{out}");
    }
}
