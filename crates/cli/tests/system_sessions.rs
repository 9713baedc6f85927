//! Several `dprobe --system-wide` at once, and dprobe's own calls: each dprobe's figures are
//! of the calls made while it traced, exactly, whatever another dprobe on the same function
//! does; none counts a call dprobe makes itself; the kernel's buffers at their default size
//! lose what a reader missed, counted and said, and the size the note names keeps it.
mod common;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use common::rounds::{event_pid, program, Rounds, Tracing};
use common::{greet, hits};

/// The tests compare the kernel's event files before and after: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn uprobe_events() -> String {
    std::fs::read_to_string(format!("{}/uprobe_events", dprobe_test_fixtures::tracing_dir())).unwrap_or_default()
}

/// The `n` of each `round_of(n=N)` event in a trace.
fn rounds_seen(trace: &str) -> BTreeSet<u64> {
    let n = |l: &str| l.split_once(" call round_of(n=")?.1.strip_suffix(')')?.parse().ok();
    trace.lines().filter_map(n).collect()
}

#[test]
fn two_dprobe_processes_on_one_function_each_count_exactly_their_own_share() {
    let _x = exclusive();
    let before = uprobe_events();
    let function = format!("{}:round_of", program());
    let spec = format!("{function} n=$arg1:s64");
    // Counted in the kernel (BPF), counted by dprobe from each record, each event shown.
    let modes: [&[&str]; 3] = [&["-c"], &["-c", "--no-bpf"], &[]];
    for (i, mode) in modes.into_iter().enumerate() {
        let mut args = vec!["-a"];
        args.extend_from_slice(mode);
        args.push(&spec);
        let mut rounds = Rounds::start();
        rounds.run(3);
        let first = Tracing::start(&format!("share-{i}-first"), &args);
        rounds.run(5);
        let second = Tracing::start(&format!("share-{i}-second"), &args);
        rounds.run(7);
        let (code, second, said) = second.stop();
        assert_eq!(code, Some(0), "{mode:?}: {said}");
        rounds.run(11);
        let (code, first, said) = first.stop();
        assert_eq!(code, Some(0), "{mode:?}: {said}");
        rounds.run(2);
        rounds.finish();
        // Rounds 4-26 ran while the first traced, 9-15 while the second did too.
        for (trace, expected, which) in [(&first, 4..=26, "first"), (&second, 9..=15, "second")] {
            let what = format!("{mode:?} {which}:\n{trace}");
            assert_eq!(hits(trace, &function), expected.clone().count() as u64, "{what}");
            for other in ["the kernel counted", "not received", "lost"] {
                assert!(!trace.contains(other), "no gap to speak of: {what}");
            }
            if mode.is_empty() {
                assert_eq!(rounds_seen(trace), expected.collect(), "{what}");
            }
        }
    }
    assert_eq!(uprobe_events(), before, "every event removed");
}

/// What the kernel says process `pid` wrote with `write` and its kin (`syscw` in its io file).
fn write_calls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("syscw: ")).unwrap().parse().unwrap()
}

#[test]
fn a_system_wide_trace_never_shows_dprobes_own_calls() {
    let _x = exclusive();
    // dprobe writes every event it receives with libc's `write`: were its own calls traced,
    // each write would bring another event.
    let mut rounds = Rounds::start();
    let tracing = Tracing::start("own-write", &["-a", "libc:write fd=$arg1 n=$arg3"]);
    let front = tracing.pid();
    let holder = common::holder(front).expect("dprobe's tracing process");
    let written = write_calls(holder);
    rounds.run(2000);
    assert!(write_calls(holder) > written, "dprobe wrote while its probe was live");
    let (code, trace, said) = tracing.stop();
    let pid = rounds.pid();
    rounds.finish();
    assert_eq!(code, Some(0), "{said}");
    let pids: Vec<u32> = trace.lines().filter(|l| l.contains(" call write(")).filter_map(event_pid).collect();
    let of = |pid: u32| pids.iter().filter(|&&p| p == pid).count();
    assert_eq!(of(pid), 2000, "each round's write, once\n{said}");
    assert_eq!((of(front), of(holder)), (0, 0), "none of dprobe's own\n{said}");
}

#[test]
fn the_default_buffers_lose_what_a_stopped_reader_missed_and_say_so_and_the_size_they_name_keeps_it() {
    let _x = exclusive();
    let spec = format!("{}:greet i=$arg2", greet());
    let label = format!("{}:greet", greet());
    const CALLS: u64 = 200_000;
    // At the default size (1 MiB per CPU) 200,000 records cannot all wait in the buffers;
    // at 32 MiB per CPU they can.
    for size in [None, Some("32M")] {
        let mut args = vec!["-a", "-c", "--no-bpf"];
        if let Some(size) = size {
            args.extend_from_slice(&["--buffer-size", size]);
        }
        args.push(&spec);
        let tracing = Tracing::start(&format!("buffer-{}", size.unwrap_or("default")), &args);
        let holder = common::holder(tracing.pid()).expect("dprobe's tracing process");
        // The reader stopped: every record of the calls waits in the buffers, or is lost.
        stop_and_wait(holder);
        let calls = CALLS.to_string();
        assert!(std::process::Command::new(greet()).args(["x", &calls]).status().unwrap().success());
        // SAFETY: a signal to the process dprobe started to trace.
        assert_eq!(unsafe { libc::kill(holder as i32, libc::SIGCONT) }, 0);
        let (code, summary, said) = tracing.stop();
        assert_eq!(code, Some(0), "{said}");
        let what = format!("{size:?}:\n{summary}");
        let lost: u64 = summary
            .lines()
            .find_map(|l| l.trim_start().split_once(" records lost: ").map(|(n, _)| n.parse().unwrap()))
            .unwrap_or(0);
        let received = hits(&summary, &label);
        assert_eq!(received + lost, CALLS, "every call received or counted as lost: {what}");
        match size {
            None => {
                assert!(lost > 0, "{what}");
                let note = "records lost: the kernel's buffers (1024 KiB per CPU) were full (it dropped them); a \
                            larger --buffer-size keeps more";
                assert!(summary.contains(note), "{what}");
                let counted = format!("the kernel counted {CALLS}, ");
                assert!(summary.contains(&counted), "the kernel's own count beside: {what}");
            }
            Some(_) => assert_eq!(received, CALLS, "{what}"),
        }
    }
}

/// SIGSTOP to `pid`, and wait until each of its threads is stopped.
fn stop_and_wait(pid: u32) {
    // SAFETY: a signal to a process this test started (through dprobe).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let stopped = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the name, which is in parentheses.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    };
    while !stopped() {
        std::thread::yield_now();
    }
}
