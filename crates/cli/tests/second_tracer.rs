//! A second dprobe asked to trace a process another dprobe traces with the agent is refused
//! with the other's process id, whatever the engine asked (two tracers would patch the same
//! code); the first trace goes on unharmed, and once it ends the process can be traced again.
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_second_trace_of_a_process_the_agent_traces_is_refused_naming_the_first() {
    let probe = "ready-then-work:work";
    let (mut child, mut out) = common::start_ready_then_work_until_told();
    let pid = child.id().to_string();
    let first = common::dprobe_command()
        .args(["trace", "--engine", "agent", "-d", "1500ms", "-c", "-p", &pid, probe])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its agent is in the process once its listener holds a connection.
    let started = Instant::now();
    let suffix = format!(".{pid}");
    while !std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .any(|l| l.contains("@dprobe-agent.") && l.ends_with(&suffix))
    {
        assert!(started.elapsed() < Duration::from_secs(120), "the first dprobe's agent never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let expected = format!("process {pid} is traced by another dprobe (process {}) with the agent", first.id());
    for engine in [None, Some("ptrace"), Some("agent")] {
        let mut args = vec!["trace", "-c", "-d", "200ms", "-p", &pid, probe];
        if let Some(e) = engine {
            args.extend(["--engine", e]);
        }
        let o = common::dprobe(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{engine:?}: {stderr}");
        assert!(stderr.contains(&expected), "{engine:?}: {stderr}");
    }
    let first = first.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{summary}");
    assert!(summary.contains("goes on untraced"), "{summary}");
    // The first trace over, the process is traced again.
    let again = common::dprobe(&["trace", "-c", "-d", "200ms", "-p", &pid, probe]);
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    drop(child.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(common::calls_and_sum_right(&rest), "{rest}");
}
