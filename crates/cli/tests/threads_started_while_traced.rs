//! A program whose main thread blocks every signal (or every asynchronous one) starts threads
//! while the ptrace engine traces it: after the detach, each has the mask it has untraced (its
//! creator's, `SIGTRAP` blocked). dprobe opens `SIGTRAP` in a thread that blocks it (a trap there would otherwise
//! reset the program's action), and a thread that starts takes its creator's mask as opened.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::dprobe_command;

/// `spawns_on_request`: one more thread for each line of its input, whose ID it prints.
fn spawns_on_request() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spawns_on_request.c");
    dprobe_test_fixtures::c_program(src, "spawns_on_request", &["-O2", "-pthread"])
}

/// The program, killed if the test fails before it ends it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ask the program for one more thread: its ID.
fn spawn(input: &mut ChildStdin, output: &mut impl BufRead) -> i32 {
    input.write_all(b"thread\n").unwrap();
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    line.trim().parse().unwrap_or_else(|_| panic!("a thread ID: {line:?}"))
}

/// Thread `tid`'s blocked signals, as `/proc` shows them.
fn blocked(pid: u32, tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim().to_owned()
}

/// Wait until process `pid` has a tracer.
fn wait_for_a_tracer(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap().contains("TracerPid:\t0\n") {
        assert!(Instant::now() < deadline, "dprobe never attached");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn threads_started_while_traced_keep_their_creators_mask_after_the_detach() {
    started_while_traced(&[]);
}

#[test]
fn threads_started_while_traced_by_a_thread_that_blocks_every_asynchronous_signal_keep_its_mask() {
    started_while_traced(&["asynchronous"]);
}

/// `spawns_on_request ARGS`, attached: its threads started while traced have the mask of one
/// started untraced after the detach.
fn started_while_traced(args: &[&str]) {
    let child =
        Command::new(spawns_on_request()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut program = Running(child);
    let pid = program.0.id();
    let mut input = program.0.stdin.take().unwrap();
    let mut output = BufReader::new(program.0.stdout.take().unwrap());
    let untraced = spawn(&mut input, &mut output);
    let dprobe = dprobe_command()
        .args(["trace", "--engine", "ptrace", "-c", "-d", "2s", "-p", &pid.to_string(), "libc:nanosleep"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_tracer(pid);
    // Past the attach (the threads it finds are noted as they are): the threads below start
    // while traced.
    std::thread::sleep(Duration::from_millis(300));
    let traced: Vec<i32> = (0..3).map(|_| spawn(&mut input, &mut output)).collect();
    let said = dprobe.wait_with_output().unwrap();
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    let expected = blocked(pid, untraced);
    assert_eq!(blocked(pid, pid as i32), expected, "{args:?}: the main thread's mask");
    for tid in traced {
        assert_eq!(blocked(pid, tid), expected, "{args:?}: thread {tid}, started while traced");
    }
    drop(input);
    assert!(program.0.wait().unwrap().success());
}
