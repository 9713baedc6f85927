//! Attaching to a process that is stopped (`SIGSTOP`, Ctrl-Z): the agent's thread, started in
//! it, would stop with it and never connect (dprobe waited 30 s, then said only that the agent
//! did not connect). The agent is refused at once, saying why; the default engine goes on with
//! ptrace. The process stays stopped, and once continued ends as untraced.
mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{calls_and_sum_right, start_ready_then_work_until_told};

/// A bound against hanging, not a measure.
const DEADLOCK: Duration = Duration::from_secs(120);

fn state_of(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signals the test's own child.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[test]
fn a_stopped_process_is_refused_by_the_agent_at_once_and_traced_by_ptrace() {
    let (mut child, mut out) = start_ready_then_work_until_told();
    let pid = child.id();
    // Working, a millisecond of its time on a CPU at least, before it is stopped.
    let ran = || -> u64 {
        let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
        schedstat.split_whitespace().next().unwrap().parse().unwrap()
    };
    let deadline = Instant::now() + DEADLOCK;
    let start = ran();
    while ran() < start + 1_000_000 {
        assert!(Instant::now() < deadline, "it never worked");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(pid, libc::SIGSTOP);
    while state_of(pid) != 'T' {
        assert!(Instant::now() < deadline, "it never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let agent = common::trace_to_file(
        "stopped-agent",
        &["--engine", "agent", "-c", "-d", "200ms", "-p", &pid.to_string(), "ready-then-work:work"],
    );
    assert_ne!(agent.code, Some(0), "{}", agent.what("agent"));
    assert!(agent.stderr.contains(&format!("process {pid} is stopped")), "{}", agent.what("agent"));
    assert!(agent.stderr.contains(&format!("kill -CONT {pid}")), "{}", agent.what("agent"));
    let default = common::trace_to_file(
        "stopped-default",
        &["-v", "-c", "-d", "200ms", "-p", &pid.to_string(), "ready-then-work:work"],
    );
    assert_eq!(default.code, Some(0), "{}", default.what("default"));
    assert!(
        default.stderr.contains("dprobe: engine: ptrace (the agent could not be loaded: process"),
        "{}",
        default.what("default")
    );
    assert_eq!(state_of(pid), 'T', "still stopped");
    assert_eq!(std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count(), 1, "no thread of the agent's left");
    signal(pid, libc::SIGCONT);
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(calls_and_sum_right(&line), "{line:?}");
    assert!(child.wait().unwrap().success());
}
