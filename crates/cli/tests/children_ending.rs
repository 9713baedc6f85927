//! The trace ends while followed processes make children in every way (`vfork`, `fork`,
//! `posix_spawn`, `system()`) as fast as they can, with a thread calling the probed function
//! all along: at the program's own end (its children live on), at the end of `--duration`,
//! and at a `SIGTERM` to a dprobe attached with `-p`. Whatever each process was doing, dprobe
//! ends, no process is left stopped, and every process finishes with its own result (each
//! checks its children's exit statuses and its sums, and says "right").
//!
//! The test process is a child subreaper: the processes dprobe lets go become its children
//! once their parents end, and are waited for here with their exit statuses. One case runs
//! at a time (the reaping takes any of the test process's children).
mod common;
#[path = "common/ending.rs"]
mod ending;
#[path = "common/killing.rs"]
mod killing;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{family, out_file};
use ending::wait_while_it_moves;

/// Rounds of each case: most rounds end the trace while some process reports a new child,
/// a thread's hit or its exec while another is being let go.
const ROUNDS: u32 = 6;
/// How long nothing may move among the processes let go before the test fails (a process
/// left stopped fails at once).
const STILL_FOR: Duration = Duration::from_secs(60);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `work`'s closed-form sum over `0..n`.
fn expected(n: u64) -> u64 {
    3 * n * (n - 1) / 2 + n
}

/// What a worker making `m` children prints when all was right.
fn right(m: u64) -> String {
    format!("right {}", expected(m) + expected(20 * m))
}

/// Every descendant of the test process: (pid, state letter, name).
fn descendants() -> Vec<(i32, char, String)> {
    let mut all = Vec::new();
    let mut parents = vec![std::process::id() as i32];
    while let Some(parent) = parents.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else {
                    continue;
                };
                let state = rest.chars().next().unwrap_or('?');
                all.push((pid, state, name.to_owned()));
                parents.push(pid);
            }
        }
    }
    all
}

/// Wait until every descendant of the test process has ended, reaping those that become its
/// children; their exit statuses by pid. Fails at once when one is stopped (dprobe has ended:
/// no tracer holds it, so it was left stopped), and when nothing moved for [`STILL_FOR`].
fn reap_all(what: &str) -> BTreeMap<i32, (String, i32)> {
    let mut ended = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut since = Instant::now();
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waits for any child of the test process (one case runs at a time).
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                break;
            }
            ended.insert(pid, (names.get(&pid).cloned().unwrap_or_default(), status));
        }
        let living = descendants();
        if living.is_empty() {
            return ended;
        }
        if let Some((pid, state, name)) = living.iter().find(|(_, s, _)| matches!(s, 't' | 'T')) {
            let report = format!("{what}: process {pid} ({name}) was left stopped (state {state}): {living:?}");
            for (pid, _, _) in &living {
                // SAFETY: kills a process this test started (a descendant).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            panic!("{report}");
        }
        names.extend(living.iter().map(|(pid, _, name)| (*pid, name.clone())));
        let times: Vec<String> = living
            .iter()
            .map(|(pid, _, _)| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .collect();
        if seen.insert(times) {
            since = Instant::now();
        } else if since.elapsed() > STILL_FOR {
            panic!("{what}: nothing moved for {STILL_FOR:?} among {living:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines the programs printed into `file`, sorted.
fn printed(file: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(file).unwrap().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// `dprobe trace --follow ... -- COMMAND`, waited for while it moves; the program's output
/// goes to `printed`. Returns dprobe's standard error.
fn trace_command(name: &str, args: &[&str], printed: &std::path::Path) -> String {
    let err = out_file(&format!("{name}.err"));
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(printed).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_while_it_moves(&mut dprobe, None, name);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(0), "{name}: {stderr}");
    stderr
}

#[test]
fn processes_making_children_when_the_program_ends_are_let_go_and_finish_right() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    killing::become_subreaper();
    // The program starts three workers and exits at once: the trace ends with it, the
    // workers (followed) are let go in the middle of making their children.
    for round in 0..ROUNDS {
        let name = format!("scatter-{round}");
        let file = out_file(&format!("{name}.printed"));
        let trace = out_file(&name);
        let args = [
            "trace",
            "-o",
            trace.to_str().unwrap(),
            "--follow",
            "--count",
            "work",
            "--",
            family(),
            "scatter",
            "3",
            "120",
        ];
        let stderr = trace_command(&name, &args, &file);
        let ended = reap_all(&name);
        assert_eq!(printed(&file), vec![right(120); 3], "{name}: {stderr}\n{ended:?}");
        assert!(ended.values().all(|(_, status)| *status == 0), "{name}: {ended:?}");
    }
}

#[test]
fn a_program_making_children_when_the_duration_ends_is_let_go_and_finishes_right() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    killing::become_subreaper();
    for round in 0..ROUNDS {
        let name = format!("churn-duration-{round}");
        let file = out_file(&format!("{name}.printed"));
        let trace = out_file(&name);
        let duration = format!("{}ms", 100 + 50 * round);
        let args = [
            "trace",
            "-o",
            trace.to_str().unwrap(),
            "--follow",
            "--duration",
            &duration,
            "--count",
            "work",
            "--",
            family(),
            "churn",
            "400",
        ];
        let stderr = trace_command(&name, &args, &file);
        let ended = reap_all(&name);
        assert_eq!(printed(&file), [right(400)], "{name}: {stderr}\n{ended:?}");
        assert!(ended.values().all(|(_, status)| *status == 0), "{name}: {ended:?}");
    }
}

#[test]
fn sigterm_to_dprobe_attached_to_a_program_making_children_lets_it_finish_right() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    killing::become_subreaper();
    // Rounds where the program (about a second of work) ended before dprobe attached, on a
    // slow machine: nothing was traced, nothing to check but the program's result.
    let mut too_late = 0;
    for round in 0..ROUNDS {
        let name = format!("churn-attached-{round}");
        let file = out_file(&format!("{name}.printed"));
        let program = Command::new(family())
            .args(["churn", "600"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&file).unwrap())
            .spawn()
            .unwrap();
        let pid = program.id().to_string();
        // Reaped with the others (by `reap_all`), not through `Child`.
        std::mem::forget(program);
        let err = out_file(&format!("{name}.err"));
        let trace = out_file(&name);
        // Every other round through the agent: its probes go in and out while `posix_spawn`
        // and `system` children run in the program's memory.
        let mut args = vec!["trace", "-v", "-o", trace.to_str().unwrap(), "--count", "work", "-p", &pid];
        if round % 2 == 0 {
            args.extend(["--engine", "ptrace"]);
        }
        let mut dprobe = common::dprobe_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        killing::wait_until("dprobe to trace", || {
            std::fs::read_to_string(&err).unwrap_or_default().contains("dprobe: tracing")
                || dprobe.try_wait().unwrap().is_some()
        });
        // The signal comes at another moment of the children's making each round.
        std::thread::sleep(Duration::from_millis(u64::from(round) * 7));
        // SAFETY: signals the dprobe this test started.
        unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) };
        let status = wait_while_it_moves(&mut dprobe, None, &name);
        let stderr = std::fs::read_to_string(&err).unwrap();
        let ended = reap_all(&name);
        assert_eq!(printed(&file), [right(600)], "{name}: {stderr}\n{ended:?}");
        assert!(ended.values().all(|(_, status)| *status == 0), "{name}: {ended:?}");
        if status.code() == Some(2) && stderr.contains(&format!("cannot trace process {pid}")) {
            too_late += 1;
            continue;
        }
        assert_eq!(status.code(), Some(0), "{name}: {stderr}");
    }
    assert!(too_late <= ROUNDS / 2, "{too_late} of {ROUNDS} rounds ended before dprobe attached");
}
