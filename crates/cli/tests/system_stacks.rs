//! `--stack` with the kernel engine (as root, on this machine's kernel): user stacks unwound
//! in dprobe from the registers and the copy of the stack each perf record brings (code
//! without frame pointers too), kernel stacks from the kernel's callchain, folded stacks.
mod common;

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{out_file, trace_to_file, Traced};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.c");
const RUST_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.rs");

/// The kernel's event files are shared: one test at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The call-path program built without frame pointers: its path and its functions' names
/// (leaf, mid, top, other, main).
fn programs() -> Vec<(&'static str, [&'static str; 5])> {
    let c = dprobe_test_fixtures::c_program(SOURCE, "calls_nofp", &["-O2", "-g", "-fomit-frame-pointer"]);
    let flags = ["-O", "-g", "-C", "force-frame-pointers=no", "--crate-name", "calls"];
    let rust = dprobe_test_fixtures::c_program_by("rustc", RUST_SOURCE, "calls_rs", &flags);
    vec![
        (c, ["leaf", "mid", "top", "other", "main"]),
        (rust, ["calls::leaf", "calls::mid", "calls::top", "calls::other", "calls::main"]),
    ]
}

/// `dprobe trace -o FILE ARGS -- PROGRAM N wait`: the program stays until its input closes,
/// which happens once FILE holds `events` lines naming `function` (the kernel engine reads a
/// process's maps when its records come: the process must still be there). The trace.
fn trace_until(name: &str, args: &[&str], program: &str, n: &str, function: &str, events: usize) -> String {
    let out = out_file(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-o", out.to_str().unwrap()])
        .args(args)
        .args(["--", program, n, "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let needle = format!("\"function\":\"{function}\"");
    let since = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.matches(&needle).count() >= events {
            break;
        }
        // A guard against a test that would hang, not a timing the result depends on.
        assert!(since.elapsed() < Duration::from_secs(120), "{events} events of {function} never came:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(&out).unwrap()
}

/// The non-inlined functions of a JSON event's user stack, innermost first, up to `main`.
fn path_to_main(event: &serde_json::Value, main: &str) -> Vec<String> {
    let mut path = Vec::new();
    for frame in event["stack"].as_array().expect("a stack") {
        if frame["inlined"] == true || frame["kernel"] == true {
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

#[test]
fn the_kernel_engine_unwinds_user_stacks_without_frame_pointers() {
    let _x = exclusive();
    for (program, [leaf, mid, top, other, main]) in programs() {
        let spec = format!("{program}:{leaf}");
        let trace =
            trace_until("kstack-leaf", &["--engine", "kernel", "--json", "--stack", &spec], program, "3", leaf, 9);
        let paths: Vec<Vec<String>> = trace
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["function"] == leaf)
            .map(|e| path_to_main(&e, main))
            .collect();
        assert_eq!(paths.len(), 9, "{trace}");
        assert_eq!(paths.iter().filter(|p| **p == [leaf, mid, top, main]).count(), 3, "{program}\n{trace}");
        assert_eq!(paths.iter().filter(|p| **p == [leaf, other, main]).count(), 6, "{program}\n{trace}");
    }
}

#[test]
fn folded_stacks_from_the_kernel_engine_count_each_path() {
    let _x = exclusive();
    let (program, [leaf, mid, top, other, main]) = programs().remove(0);
    let folded = out_file("kstacks.folded");
    let to = format!("--folded={}", folded.display());
    let spec = format!("{program}:{leaf}");
    // JSON lines beside the folded file, for the wait.
    let trace = trace_until("kstack-folded", &["--engine", "kernel", "--json", &to, &spec], program, "4", leaf, 12);
    let text = std::fs::read_to_string(&folded).unwrap();
    let mut got: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').unwrap();
            let from = stack.find(&format!(";{main};")).map_or(0, |i| i + 1);
            (stack[from..].to_owned(), n.parse().unwrap())
        })
        .collect();
    got.sort();
    let expected = vec![(format!("{main};{other};{leaf}"), 8), (format!("{main};{top};{mid};{leaf}"), 4)];
    assert_eq!(got, expected, "{text}\n{trace}");
}

#[test]
fn kernel_stacks_come_from_the_kernel_callchain() {
    let _x = exclusive();
    let args =
        ["-a", "--json", "--stack=kernel", "--comm", "true", "tracepoint:sched:sched_process_exec", "--", "true"];
    let Traced { code, stderr, trace, .. } = trace_to_file("kstack-kernel", &args);
    assert_eq!(code, Some(0), "{stderr}\n{trace}");
    let event: serde_json::Value = serde_json::from_str(trace.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let frames: Vec<&str> =
        event["stack"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap_or("?")).collect();
    assert!(event["stack"].as_array().unwrap().iter().all(|f| f["kernel"] == true), "{trace}");
    // An exec is a system call: the stack goes from the system call's entry to the exec.
    assert!(frames.iter().any(|f| f.contains("execve")), "{frames:?}");
    assert!(frames.last().is_some_and(|f| f.starts_with("entry_SYSCALL_64")), "{frames:?}");
}

#[test]
fn a_caller_with_a_pending_kernel_return_probe_stays_in_the_stack() {
    let _x = exclusive();
    for (program, [leaf, mid, top, _, main]) in programs() {
        let specs = [format!("{program}:{leaf}"), format!("{program}:{mid}%return"), format!("{program}:{top}%return")];
        let args = ["--engine", "kernel", "--json", "--stack", &specs[0], &specs[1], &specs[2]];
        let trace = trace_until("kstack-return", &args, program, "2", top, 2);
        let events: Vec<serde_json::Value> =
            trace.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
        let paths = |function: &str| -> Vec<Vec<String>> {
            events.iter().filter(|e| e["function"] == function).map(|e| path_to_main(e, main)).collect()
        };
        // While the leaf runs, both callers' return addresses are the kernel's trampoline:
        // each is shown as the caller it stands for.
        let via_top: Vec<Vec<String>> = paths(leaf).into_iter().filter(|p| p.len() == 4).collect();
        assert_eq!(via_top, vec![vec![leaf, mid, top, main]; 2], "{program}\n{trace}");
        assert_eq!(paths(mid), vec![vec![top, main]; 2], "{program}\n{trace}");
        assert_eq!(paths(top), vec![vec![main]; 2], "{program}\n{trace}");
    }
}
