//! `dprobe trace` of programs that make children: `system()`, `posix_spawn`, `vfork`, `fork`.
//! The program checks its own sums and its children's exit statuses (exit 0: all right).
mod common;

use common::{family, hits, trace};

#[test]
fn system_posix_spawn_and_vfork_keep_every_call_counted() {
    for (mode, calls) in [("system", 100), ("spawn", 100), ("vfork", 100)] {
        let (code, out) = trace(mode, &["--count", "work", "--", family(), mode, "100"]);
        assert_eq!(code, Some(0), "{mode}: the program and its children ran right\n{out}");
        // A vfork child calls work once more, in the program's memory.
        let children = if mode == "vfork" { calls } else { 0 };
        assert_eq!(hits(&out, "work"), calls + children, "{mode}\n{out}");
    }
}

#[test]
fn a_fork_child_runs_untraced_and_right() {
    let (code, out) = trace("fork", &["--count", "work", "forker%return", "--", family(), "fork", "30", "40"]);
    assert_eq!(code, Some(0), "the child's own sum was right\n{out}");
    assert_eq!((hits(&out, "work"), hits(&out, "forker%return")), (30, 1), "{out}");
}
