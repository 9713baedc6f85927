//! A program whose threads wait for signals (`sigsuspend`, `sigwaitinfo`), each sent its signal
//! only once it is about to wait, attached by dprobe again and again: every wait still ends
//! with the program's own signal, as untraced. The agent's safepoints signal threads found
//! running, which may be back in their wait when the signal comes: such a wait is made again,
//! not ended with `EINTR` and no handler of the program's run.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{dprobe_command, out_file};

/// `waits_for_signals`: prints "spurious N, rounds A B" once its standard input ends.
fn waits_for_signals() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waits_for_signals.c");
    dprobe_test_fixtures::c_program(src, "waits_for_signals", &["-O2", "-pthread"])
}

/// dprobe's traces of the program.
const TRACES: u32 = 25;

fn attached_again_and_again(engine: &str) {
    if engine == "agent" && !common::wrappers_name_their_calls() {
        return eprintln!("skipped: this C library makes its calls through one function");
    }
    let mut program = Command::new(waits_for_signals()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = program.id();
    // Its three threads and the main one run.
    while std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() < 4 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = out_file(&format!("signal-waits-{engine}"));
    for trace in 0..TRACES {
        let status = dprobe_command()
            .args(["trace", "--engine", engine, "-c", "-d", "20ms", "-o", out.to_str().unwrap()])
            .args(["-p", &pid.to_string(), "libc:nanosleep"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{engine}, trace {trace}: {status}");
    }
    drop(program.stdin.take());
    let mut printed = String::new();
    program.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    let status = program.wait().unwrap();
    assert!(printed.starts_with("spurious 0, rounds "), "{engine}: {printed}");
    assert!(status.success(), "{engine}: {status}: {printed}");
}

#[test]
fn waits_for_signals_end_with_the_programs_signals_under_the_agent() {
    attached_again_and_again("agent");
}

#[test]
fn waits_for_signals_end_with_the_programs_signals_under_ptrace() {
    attached_again_and_again("ptrace");
}
