//! Children forked often, not followed (`--no-follow`): each removes the probes it inherited
//! before `fork` returns in it, through the agent's engine. A `fork` made while the agent's
//! own thread held the engine's lock (it looks at the probes' `int3`s every 100 ms) once left
//! the child that lock held by a thread it does not have: the child waited for it for ever,
//! and its parent for the child.
mod common;
#[path = "common/ending.rs"]
mod ending;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hits, out_file};

/// Forks: enough that the old fault hung about half the runs.
const FORKS: u32 = 2000;

#[test]
fn children_forked_often_and_not_followed_each_run_and_end() {
    let program = dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forks_often.c"),
        "forks_often",
        &["-O2"],
    );
    let out = out_file("no-follow-forks");
    let forks = FORKS.to_string();
    let args = ["trace", "-o", out.to_str().unwrap(), "--engine", "agent", "--no-follow", "-c", "forks_often:work"];
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(args)
        .args(["--", program, &forks])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = tracer.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let hung = ending::family(tracer.id());
            let _ = tracer.kill();
            for pid in hung {
                // SAFETY: a signal to a process this test started (through dprobe).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let trace = std::fs::read_to_string(&out).unwrap_or_default();
            panic!("the program did not end in 120 s (a child hung?)\n{trace}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::io::read_to_string(tracer.stdout.take().unwrap()).unwrap();
    let trace = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status.code(), Some(0), "{printed}\n{trace}");
    let sum: u64 = (0..u64::from(FORKS)).map(|i| i * 3 + 1).sum();
    assert_eq!(printed.trim(), format!("sum {sum}"), "{trace}");
    // The parent's calls alone: the children ran untraced.
    assert_eq!(hits(&trace, "forks_often:work"), u64::from(FORKS), "{trace}");
    assert!(trace.contains(&format!("{FORKS} child processes ran untraced")), "{trace}");
}
