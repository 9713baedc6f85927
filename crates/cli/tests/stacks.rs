//! `--stack`, `--folded` and `--by stack`: the stack at a probed leaf is the known call path,
//! in C built without frame pointers (`-fomit-frame-pointer -O2`: only the call-frame
//! information unwinds it), in C with frame pointers and in Rust; a caller with a pending
//! return probe stays in the stack (its trampoline is mapped back to the real return
//! address); folded stacks count the calls of each path exactly. Each with every engine that
//! captures user stacks: ptrace (stopped threads' memory) and the agent (a copy of the stack
//! taken in the probed thread).
mod common;

use common::{out_file, trace_to_file, Traced};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.c");
const RUST_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.rs");

/// The engines that capture stacks.
const ENGINES: &[&str] = &["ptrace", "agent"];

/// One build of the call-path program, and how its functions are named.
struct Program {
    path: &'static str,
    /// The names of `leaf`, `mid`, `top`, `other` and `main` in the stacks and the specs.
    leaf: &'static str,
    mid: &'static str,
    top: &'static str,
    other: &'static str,
    main: &'static str,
}

fn c_program(name: &'static str, frame_pointers: bool) -> Program {
    let fp = if frame_pointers { "-fno-omit-frame-pointer" } else { "-fomit-frame-pointer" };
    let path = dprobe_test_fixtures::c_program(SOURCE, name, &["-O2", "-g", "-pthread", fp]);
    Program { path, leaf: "leaf", mid: "mid", top: "top", other: "other", main: "main" }
}

fn rust_program() -> Program {
    let flags = ["-O", "-g", "-C", "force-frame-pointers=no", "--crate-name", "calls"];
    let path = dprobe_test_fixtures::c_program_by("rustc", RUST_SOURCE, "calls_rs", &flags);
    Program {
        path,
        leaf: "calls::leaf",
        mid: "calls::mid",
        top: "calls::top",
        other: "calls::other",
        main: "calls::main",
    }
}

fn programs() -> Vec<Program> {
    vec![c_program("calls_nofp", false), c_program("calls_fp", true), rust_program()]
}

/// The functions of a JSON event's stack that hold code (inlined calls left out), innermost
/// first, up to the program's `main`.
fn path_to_main(event: &serde_json::Value, main: &str) -> Vec<String> {
    let mut path = Vec::new();
    for frame in event["stack"].as_array().expect("a stack") {
        if frame["inlined"] == true {
            continue;
        }
        let name = frame["function"].as_str().unwrap_or("?").to_owned();
        let done = name == main;
        path.push(name);
        if done {
            break;
        }
    }
    path
}

/// The events of a JSON trace, by function.
fn events<'a>(trace: &'a str, function: &'a str) -> impl Iterator<Item = serde_json::Value> + 'a {
    trace
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(move |e| e["function"] == function)
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
            let paths: Vec<Vec<String>> = events(&trace, p.leaf).map(|e| path_to_main(&e, p.main)).collect();
            let via_top = vec![p.leaf, p.mid, p.top, p.main];
            let via_other = vec![p.leaf, p.other, p.main];
            assert_eq!(paths.len(), 9, "{what}");
            assert_eq!(paths.iter().filter(|s| **s == via_top).count(), 3, "{what}");
            assert_eq!(paths.iter().filter(|s| **s == via_other).count(), 6, "{what}");
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
            // Both callers' return addresses are the return probes' trampolines while the
            // leaf runs: each is shown as the caller it stands for.
            let via_top: Vec<Vec<String>> =
                events(&trace, p.leaf).map(|e| path_to_main(&e, p.main)).filter(|s| s.len() == 4).collect();
            assert_eq!(via_top, vec![vec![p.leaf, p.mid, p.top, p.main]; 2], "{what}");
            // At its return, `mid` is gone from the stack: the thread is back in `top`.
            let returns: Vec<Vec<String>> = events(&trace, p.mid).map(|e| path_to_main(&e, p.main)).collect();
            assert_eq!(returns, vec![vec![p.top, p.main]; 2], "{what}");
            let returns: Vec<Vec<String>> = events(&trace, p.top).map(|e| path_to_main(&e, p.main)).collect();
            assert_eq!(returns, vec![vec![p.main]; 2], "{what}");
        }
    }
}

/// The folded lines from `main` on (the frames below it, in the C library's start code,
/// differ between systems): `(path, count)`.
fn folded_from_main(text: &str, main: &str) -> Vec<(String, u64)> {
    let mut lines: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let (stack, count) = l.rsplit_once(' ').expect("`stack count`");
            let from = stack.split(';').position(|f| f == main).expect("main in every stack");
            (stack.split(';').skip(from).collect::<Vec<_>>().join(";"), count.parse().expect("a count"))
        })
        .collect();
    lines.sort();
    lines
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
            let expected = vec![
                (format!("{};{};{}", p.main, p.other, p.leaf), 10),
                (format!("{};{};{};{}", p.main, p.top, p.mid, p.leaf), 5),
            ];
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
            let mut expected = expected;
            expected.sort();
            assert_eq!(got, expected, "{what}\n{text}");
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
