//! `--stack`, `--folded` and `--by stack`: the stack at a probed leaf is the known call path,
//! in C built without frame pointers (`-fomit-frame-pointer -O2`: only the call-frame
//! information unwinds it), in C with frame pointers and in Rust; a caller with a pending
//! return probe stays in the stack (its trampoline is mapped back to the real return
//! address); folded stacks count the calls of each path exactly. Each with every engine that
//! captures user stacks: ptrace (stopped threads' memory) and the agent (a copy of the stack
//! taken in the probed thread).
#[path = "common/call_paths.rs"]
mod call_paths;
mod common;

use call_paths::{c_program, events, folded_from_main, path_to_main, rust_program, Program};
use common::{out_file, trace_to_file, Traced};

/// The engines that capture stacks.
const ENGINES: &[&str] = &["ptrace", "agent"];

fn programs() -> Vec<Program> {
    vec![c_program("calls_nofp", false), c_program("calls_fp", true), rust_program()]
}

#[test]
fn the_stack_at_a_leaf_is_its_call_path() {
    for p in programs() {
        for &engine in ENGINES {
            let Traced { code, stdout, stderr, trace } =
                trace_to_file("stack-leaf", &["--engine", engine, "--json", "--stack", p.leaf, "--", p.path, "3"]);
            let what = format!("{} {engine}\n{stderr}\n{trace}", p.path);
            assert_eq!(code, Some(0), "{what}");
            assert!(stdout.starts_with("top-mid-leaf=3 other-leaf=6 "), "{what}");
            p.assert_leaf_paths(&trace, 3, &what);
            // Each frame says where it is: the leaf's own frame is its first instruction, in
            // the program's file, at the line of the function's body.
            let first = events(&trace, p.leaf).next().expect("an event");
            let leaf = first["stack"].as_array().unwrap().iter().find(|f| f["inlined"] == false).unwrap().clone();
            assert_eq!(leaf["offset"], 0, "{what}");
            assert_eq!(leaf["object"], p.path, "{what}");
            let file = leaf["file"].as_str().unwrap_or_default();
            assert!(file.ends_with("calls.c") || file.ends_with("calls.rs"), "{what}");
        }
    }
}

const LIBRARY_CALLER: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int asks_its_pid(void) { return getpid() > 0; }
int main(void) {
    int n = 0;
    for (int i = 0; i < 3; i++) n += asks_its_pid();
    printf("%d\n", n);
    return 0;
}
"#;

/// A probe in a shared library: the stack goes on into the program's callers. (The agent
/// makes a code page of the library writable under a jump, with a read-only alias of it
/// elsewhere: the alias is no part of the library's range when unwinding.)
#[test]
fn the_stack_at_a_library_function_goes_on_into_the_programs_callers() {
    let program = common::c_program_from("library-caller", LIBRARY_CALLER, &["-O1", "-g"]);
    for &engine in ENGINES {
        let Traced { code, stdout, stderr, trace } =
            trace_to_file("stack-library", &["--engine", engine, "--json", "--stack", "libc:getpid", "--", program]);
        let what = format!("{engine}\n{stderr}\n{trace}");
        assert_eq!((code, stdout.as_str()), (Some(0), "3\n"), "{what}");
        let stacks: Vec<Vec<String>> = events(&trace, "getpid").map(|e| path_to_main(&e, "main")).collect();
        assert_eq!(stacks.len(), 3, "{what}");
        for stack in &stacks {
            assert_eq!(stack[1..], ["asks_its_pid", "main"], "{stack:?}\n{what}");
        }
    }
}

#[test]
fn a_caller_with_a_pending_return_probe_stays_in_the_stack() {
    for p in programs() {
        for &engine in ENGINES {
            let mid_return = format!("{}%return", p.mid);
            let top_return = format!("{}%return", p.top);
            let args = ["--engine", engine, "--json", "--stack", p.leaf, &mid_return, &top_return, "--", p.path, "2"];
            let Traced { code, stderr, trace, .. } = trace_to_file("stack-return", &args);
            let what = format!("{} {engine}\n{stderr}\n{trace}", p.path);
            assert_eq!(code, Some(0), "{what}");
            // The callers' return addresses are the return probes' trampolines while the
            // leaf runs.
            p.assert_pending_returns_kept(&trace, 2, &what);
        }
    }
}

#[test]
fn folded_stacks_count_each_path_exactly() {
    for p in programs() {
        for &engine in ENGINES {
            let folded = out_file("stacks.folded");
            let to = format!("--folded={}", folded.display());
            let Traced { code, stderr, trace, .. } =
                trace_to_file("stack-folded", &["--engine", engine, "--count", &to, p.leaf, "--", p.path, "5"]);
            let what = format!("{} {engine}\n{stderr}\n{trace}", p.path);
            assert_eq!(code, Some(0), "{what}");
            let text = std::fs::read_to_string(&folded).unwrap();
            // Inlined calls are frames of their own in a flame graph; the Rust build inlines
            // nothing between main and the leaf.
            let got: Vec<(String, u64)> = folded_from_main(&text, p.main)
                .into_iter()
                .map(|(s, n)| {
                    (
                        s.split(';')
                            .filter(|f| !f.contains("::hint::") && !f.contains("wrapping_mul"))
                            .collect::<Vec<_>>()
                            .join(";"),
                        n,
                    )
                })
                .collect();
            assert_eq!(got, p.folded_leaf(5), "{what}\n{text}");
            assert!(trace.contains("leaf") && !trace.contains("call "), "events are counted, not printed: {what}");
        }
    }
}

#[test]
fn recursion_and_threads_each_keep_their_own_stack_through_every_pending_return() {
    for p in programs().into_iter().take(2) {
        for &engine in ENGINES {
            // Every level of the recursion has a pending return probe: six trampolines in
            // one stack, each shown as the level it stands for.
            let args = ["--engine", engine, "--json", "--stack", p.leaf, "down%return", "--", p.path, "1", "deep"];
            let Traced { code, stderr, trace, .. } = trace_to_file("stack-deep", &args);
            let what = format!("{} {engine}\n{stderr}\n{trace}", p.path);
            assert_eq!(code, Some(0), "{what}");
            let paths: Vec<Vec<String>> = events(&trace, p.leaf).map(|e| path_to_main(&e, p.main)).collect();
            let deep = vec!["leaf", "down", "down", "down", "down", "down", "down", "main"];
            assert_eq!(paths.iter().filter(|s| **s == deep).count(), 1, "{what}");
            // The thread's stack ends in its own start function, not in main.
            let in_thread = events(&trace, p.leaf)
                .map(|e| path_to_main(&e, "worker"))
                .filter(|s| s.last().map(String::as_str) == Some("worker"))
                .count();
            assert_eq!(in_thread, 1, "{what}");
            assert_eq!(paths.len(), 5, "{what}");
            // Each level's return, from the innermost: the levels above it remain.
            let returns: Vec<usize> = events(&trace, "down").map(|e| path_to_main(&e, p.main).len()).collect();
            assert_eq!(returns, vec![6, 5, 4, 3, 2, 1], "{what}");
        }
    }
}

#[test]
fn counts_by_stack_split_each_path() {
    let p = c_program("calls_nofp", false);
    let Traced { code, stderr, trace, .. } =
        trace_to_file("stack-by", &["--count", "--by", "stack", p.leaf, "--", p.path, "4"]);
    assert_eq!(code, Some(0), "{stderr}\n{trace}");
    let rows: Vec<(String, u64)> = trace
        .lines()
        .filter(|l| l.contains(";main;"))
        .map(|l| {
            let (stack, count) = l.trim().rsplit_once(' ').unwrap();
            let stack = stack.trim();
            let from = stack.find(";main;").unwrap() + 1;
            (stack[from..].to_owned(), count.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(rows, vec![("main;other;leaf".to_owned(), 8), ("main;top;mid;leaf".to_owned(), 4)], "{trace}");
}

#[test]
fn a_kernel_stack_asked_of_the_agent_is_refused_with_what_to_use() {
    let p = c_program("calls_nofp", false);
    let Traced { code, stderr, .. } =
        trace_to_file("stack-agent", &["--engine", "agent", "--stack=kernel,user", p.leaf, "--", p.path]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--stack: the agent engine captures user stacks only; kernel stacks need the kernel engine"),
        "{stderr}"
    );
}

#[test]
fn stack_options_are_checked() {
    common::assert_refused(&[
        (&["--stack=both", "f", "--", "true"], "--stack=both: name the stacks with `user`, `kernel` or `kernel,user`"),
        (&["--stack", "--stack-depth", "0", "f", "--", "true"], "--stack-depth 0"),
    ]);
}

/// A forked child's stacks are in its parent's map: the child has ended when the agent's
/// records of it are read, and they are unwound and named through the program's map (they
/// were one raw address each). The parent's calls and the child's have the same path.
#[test]
fn a_forked_child_that_has_ended_has_its_stacks_named() {
    for engine in ["agent", "ptrace"] {
        let folded = out_file(&format!("fork-{engine}.folded"));
        let to = format!("--folded={}", folded.display());
        let args = ["--engine", engine, &to, "work", "--", common::family(), "fork", "3", "4"];
        let t = trace_to_file(&format!("stack-fork-{engine}"), &args);
        assert!(t.trace.contains("exited with status 0"), "{}", t.what(engine));
        let text = std::fs::read_to_string(&folded).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{engine}: one path for both processes' calls\n{text}");
        assert!(lines[0].contains(";main;") && lines[0].ends_with(";work 7"), "{engine}\n{text}");
    }
}
