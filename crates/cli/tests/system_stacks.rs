//! `--stack` with the kernel engine (as root, on this machine's kernel): user stacks unwound
//! in dprobe from the registers and the copy of the stack each perf record brings (code
//! without frame pointers too), kernel stacks from the kernel's callchain, folded stacks.
mod common;

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "common/call_paths.rs"]
mod call_paths;

use call_paths::{c_program, folded_from_main, rust_program, Program};
use common::{out_file, trace_to_file, Traced};

/// The kernel's event files are shared: one test at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The call-path program built without frame pointers, in C and in Rust.
fn programs() -> Vec<Program> {
    vec![c_program("calls_nofp", false), rust_program()]
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

#[test]
fn the_kernel_engine_unwinds_user_stacks_without_frame_pointers() {
    let _x = exclusive();
    for p in programs() {
        let spec = format!("{}:{}", p.path, p.leaf);
        let trace =
            trace_until("kstack-leaf", &["--engine", "kernel", "--json", "--stack", &spec], p.path, "3", p.leaf, 9);
        p.assert_leaf_paths(&trace, 3, &format!("{}\n{trace}", p.path));
    }
}

#[test]
fn folded_stacks_from_the_kernel_engine_count_each_path() {
    let _x = exclusive();
    let p = programs().remove(0);
    let folded = out_file("kstacks.folded");
    let to = format!("--folded={}", folded.display());
    let spec = format!("{}:{}", p.path, p.leaf);
    // JSON lines beside the folded file, for the wait.
    let trace = trace_until("kstack-folded", &["--engine", "kernel", "--json", &to, &spec], p.path, "4", p.leaf, 12);
    let text = std::fs::read_to_string(&folded).unwrap();
    assert_eq!(folded_from_main(&text, p.main), p.folded_leaf(4), "{text}\n{trace}");
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
    for p in programs() {
        let (program, top) = (p.path, p.top);
        let specs =
            [format!("{program}:{}", p.leaf), format!("{program}:{}%return", p.mid), format!("{program}:{top}%return")];
        let args = ["--engine", "kernel", "--json", "--stack", &specs[0], &specs[1], &specs[2]];
        let trace = trace_until("kstack-return", &args, program, "2", top, 2);
        // While the leaf runs, both callers' return addresses are the kernel's trampoline.
        p.assert_pending_returns_kept(&trace, 2, &format!("{program}\n{trace}"));
    }
}
