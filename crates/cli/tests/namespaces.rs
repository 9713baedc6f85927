//! Programs in pid namespaces of their own (`unshare --pid --fork`, a container's): their
//! agent numbers them as their namespace does, and those numbers name other processes in
//! dprobe's (1 is its `init`). A child that asks before its `exec` is found among the
//! program's descendants by the ids it gave, and followed; nothing else is touched.
mod common;

use common::{family, hits, trace};

/// Whether this machine lets a pid namespace be made here (root, or a user namespace).
fn pid_namespaces_allowed() -> bool {
    std::process::Command::new("unshare").args(["--pid", "--fork", "true"]).status().is_ok_and(|s| s.success())
}

#[test]
fn children_in_a_pid_namespace_are_followed_into_their_programs() {
    if !pid_namespaces_allowed() {
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
