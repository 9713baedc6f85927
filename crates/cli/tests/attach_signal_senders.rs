//! Signals that arrive while `dprobe trace -p` attaches and detaches reach the program as they
//! were sent: same code, same sender, same value, once. Programs rely on it: glibc's `setgid`
//! in a threaded program signals every thread and waits until each answers, and a thread
//! ignores the signal unless it is a `tgkill` from its own process (one resent by the
//! tracer, or made to look like a `kill` from it, left `setgid` waiting for ever).
mod common;
#[path = "common/ending.rs"]
mod ending;

use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ending::Running;

fn senders() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/senders.c");
    dprobe_test_fixtures::c_program(src, "senders", &["-O2", "-pthread"])
}

/// The program in `mode`, once its handlers are installed and its workers run.
fn start(mode: &str) -> (Running, BufReader<ChildStdout>) {
    let mut child = Command::new(senders()).arg(mode).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (Running(child), out)
}

/// How long the program may take to end once asked: far more than it needs (it waits for
/// its last signals, at most 5 s); a program still there then is stuck.
const TO_END: Duration = Duration::from_secs(60);

/// Ask the program to end (SIGUSR2) and return what it printed and its exit code; fails,
/// saying where its main thread waits, if it does not end.
fn finish(mut program: Running, mut out: BufReader<ChildStdout>, what: &str) -> (String, Option<i32>) {
    let pid = program.0.id();
    // SAFETY: signals the test's own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    let limit = Instant::now() + TO_END;
    while program.0.try_wait().unwrap().is_none() {
        if Instant::now() > limit {
            let at = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stack")).unwrap_or_default();
            panic!("{what}: the program did not end; its main thread waits in system call {at}{stack}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    (text, program.0.wait().unwrap().code())
}

/// `times` short traces of the program's probed `work` with `engine`, one after the other.
fn attach_again_and_again(pid: u32, engine: &str, times: usize) {
    let spec = format!("{}:work", senders());
    for i in 0..times {
        let o =
            common::dprobe(&["trace", "-p", &pid.to_string(), "--engine", engine, "--duration", "30ms", "-c", &spec]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "attach {i} with {engine}: {stderr}");
        assert!(stderr.contains("it goes on untraced"), "attach {i} with {engine}: {stderr}");
    }
}

/// "queued Q received R altered A repeated D" as numbers.
fn counts(line: &str) -> [u64; 4] {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| words[i].parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    assert_eq!((words[0], words[2], words[4], words[6]), ("queued", "received", "altered", "repeated"), "{line}");
    [n(1), n(3), n(5), n(7)]
}

#[test]
fn untraced_the_program_sees_every_signal_as_sent() {
    let (program, out) = start("senders");
    std::thread::sleep(Duration::from_millis(300));
    let (text, code) = finish(program, out, "untraced");
    let [queued, received, altered, repeated] = counts(&text);
    assert!(queued > 0, "{text}");
    assert_eq!((received, altered, repeated, code), (queued, 0, 0, Some(0)), "{text}");
}

fn signals_keep_their_sender(engine: &str, attaches: usize) {
    let (program, out) = start("senders");
    attach_again_and_again(program.0.id(), engine, attaches);
    let (text, code) = finish(program, out, engine);
    let [queued, received, altered, repeated] = counts(&text);
    assert_eq!(altered, 0, "{engine}: signals whose code or sender changed: {text}");
    assert_eq!(repeated, 0, "{engine}: values received twice: {text}");
    assert_eq!(received, queued, "{engine}: every queued signal received: {text}");
    assert_eq!(code, Some(0), "{engine}: the workers' results: {text}");
}

#[test]
fn signals_arriving_during_ptrace_attaches_and_detaches_keep_their_sender() {
    signals_keep_their_sender("ptrace", 60);
}

#[test]
fn signals_arriving_during_agent_attaches_and_detaches_keep_their_sender() {
    signals_keep_their_sender("agent", 20);
}

fn setgid_goes_on(engine: &str, attaches: usize) {
    let (program, out) = start("setxid");
    attach_again_and_again(program.0.id(), engine, attaches);
    let (text, code) = finish(program, out, engine);
    assert_eq!((text.as_str(), code), ("setgid ok\n", Some(0)), "{engine}");
}

#[test]
fn setgid_in_a_threaded_program_goes_on_through_ptrace_attaches() {
    setgid_goes_on("ptrace", 40);
}

#[test]
fn setgid_in_a_threaded_program_goes_on_through_agent_attaches() {
    setgid_goes_on("agent", 20);
}
