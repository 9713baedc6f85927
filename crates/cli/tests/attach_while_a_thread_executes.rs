//! Attaching the agent to a process whose second thread executes a program every few
//! milliseconds: the attach races each `exec`, which takes the process's id from its first
//! thread (the one dprobe seizes first) without a word to its tracer. dprobe must never hang
//! waiting for that thread, and where the attach loses the race it says so (no raw `waitpid`
//! error, no "thread is gone"); the program runs its chain to the end, its sums right.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generations of the chain: a few seconds of `exec`s.
const GENERATIONS: u32 = 600;

fn chain_program() -> &'static str {
    dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/execs_from_a_thread.c"),
        "execs_from_a_thread",
        &["-O2", "-pthread"],
    )
}

#[test]
fn an_attach_racing_a_threads_exec_ends_and_says_why() {
    attach_racing_execs(Command::new(chain_program()));
}

/// Without address randomization each generation's auxiliary vector is the last one's: the
/// lost race was said as "thread is gone", "refused even to root" or a raw `waitpid` error.
#[test]
fn an_attach_racing_a_threads_exec_says_why_without_address_randomization() {
    let setarch = Command::new("setarch").args(["x86_64", "-R", "true"]).status();
    if !setarch.is_ok_and(|s| s.success()) {
        return eprintln!("skipped: `setarch -R` cannot run here");
    }
    let mut command = Command::new("setarch");
    command.args(["x86_64", "-R", chain_program()]);
    attach_racing_execs(command);
}

/// The chain started by `command` (its program and what comes before it), attached again
/// and again as it runs.
fn attach_racing_execs(mut command: Command) {
    let mut chain = command.arg(GENERATIONS.to_string()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = chain.id().to_string();
    let mut said = Vec::new();
    for _ in 0..6 {
        let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
            .args(["trace", "--engine", "agent", "-c", "-d", "100ms", "-p", &pid, "execs_from_a_thread:work"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while dprobe.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = dprobe.kill();
                let _ = chain.kill();
                panic!("dprobe still attaching after 60 s; it said before: {said:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = dprobe.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            let why = stderr.contains("executed another program") && stderr.contains("try again");
            assert!(why, "a refusal that says why, and what to do: {stderr}");
        }
        for raw in ["waitpid", "os error", "is gone", "refused even to root"] {
            assert!(!stderr.contains(raw), "{raw}: {stderr}");
        }
        said.push(stderr);
        if chain.try_wait().unwrap().is_some() {
            break;
        }
    }
    let end = chain.wait_with_output().unwrap();
    assert!(end.status.success(), "the chain: {:?}; dprobe said: {said:?}", end.status);
    assert_eq!(String::from_utf8_lossy(&end.stdout).trim(), format!("reached generation {GENERATIONS}"));
}
