//! `--stack` with the kernel engine (as root, on this machine's kernel): user stacks unwound
//! in dprobe from the registers and the copy of the stack each perf record brings (code
//! without frame pointers too), kernel stacks from the kernel's callchain, folded stacks.
mod common;

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "common/call_paths.rs"]
mod call_paths;

use call_paths::{c_program, events, folded_from_main, path_to_main, rust_program, Program};
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
    trace_and_said(name, args, program, n, function, events).0
}

/// [`trace_until`], and what dprobe said on its standard error.
fn trace_and_said(
    name: &str,
    args: &[&str],
    program: &str,
    n: &str,
    function: &str,
    events: usize,
) -> (String, String) {
    let out = out_file(name);
    let said = out_file(&format!("{name}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-o", out.to_str().unwrap()])
        .args(args)
        .args(["--", program, n, "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&said).unwrap())
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
    let said = std::fs::read_to_string(&said).unwrap();
    assert!(status.success(), "{status:?}\n{said}");
    (std::fs::read_to_string(&out).unwrap(), said)
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
        // A register read at the return keeps the kernel's return probe (a trampoline in place
        // of the return address) rather than uprobes at the functions' exits.
        let specs = [
            format!("{program}:{}", p.leaf),
            format!("{program}:{}%return r=$retval a=%ax", p.mid),
            format!("{program}:{top}%return r=$retval a=%ax"),
        ];
        let args = ["--engine", "kernel", "--json", "--stack", &specs[0], &specs[1], &specs[2]];
        let trace = trace_until("kstack-return", &args, program, "2", top, 2);
        // While the leaf runs, both callers' return addresses are the kernel's trampoline.
        p.assert_pending_returns_kept(&trace, 2, &format!("{program}\n{trace}"));
    }
}

#[test]
fn a_return_watched_at_the_exits_has_the_stack_the_kernels_return_probe_gives_the_same_call() {
    let _x = exclusive();
    for p in programs() {
        let program = p.path;
        // Each function's returns both ways: at its exits (the stack read at its `ret`), and
        // through the return address (a register read there keeps the kernel's return probe).
        let at_exits = [format!("{program}:{}%return", p.mid), format!("{program}:{}%return", p.top)];
        let via_trampoline = at_exits.clone().map(|s| format!("{s} a=%ax"));
        let leaf_spec = format!("{program}:{}", p.leaf);
        let mut args = vec!["--engine", "kernel", "-v", "--json", "--stack", &leaf_spec];
        args.extend(at_exits.iter().chain(&via_trampoline).map(String::as_str));
        let (trace, said) = trace_and_said("kstack-exits", &args, program, "2", p.top, 4);
        for spec in &at_exits {
            assert!(said.contains(&format!("`{spec}`: its returns are watched at its ")), "{spec}\n{said}");
        }
        for spec in &via_trampoline {
            assert!(said.contains(&format!("`{spec}`: its returns are watched through the return")), "{said}");
        }
        // The returns of `function` one way and the other, in the order of the calls.
        let returns = |function: &str, trampoline: bool| -> Vec<serde_json::Value> {
            let of = |e: &serde_json::Value| e["kind"] == "return" && e["args"].get("a").is_some() == trampoline;
            events(&trace, function).filter(of).collect()
        };
        for (function, callers) in [(p.mid, vec![p.top, p.main]), (p.top, vec![p.main])] {
            let (exits, trampoline) = (returns(function, false), returns(function, true));
            assert_eq!((exits.len(), trampoline.len()), (2, 2), "{program}\n{trace}");
            for (e, t) in exits.iter().zip(&trampoline) {
                assert_eq!(e["stack"], t["stack"], "{function}: the same frames, addresses included\n{trace}");
                assert_eq!(path_to_main(e, p.main), callers, "{program}\n{trace}");
            }
        }
    }
}
