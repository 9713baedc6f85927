//! A thread held to load a library is let go without being woken: a thread that waited in a
//! system call is taken out of it once (by the tracer's interrupt) and is back in it, asleep,
//! when the process is let go. Detaching would wake it once more, and a signal arriving while
//! it went back would run its handler before the call, which then waits on as if the signal
//! had never come (`while (!done) pause();` waits for ever).
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dprobe_ptrace::Injector;

/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(120);

/// The main thread of `pid`: its state letter and the system call it is in (`-1` outside one).
fn state_and_call(pid: u32) -> (char, i64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat.rsplit_once(") ").unwrap().1.chars().next().unwrap();
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap();
    (state, call.split_whitespace().next().unwrap().parse().unwrap_or(i64::MIN))
}

/// Wait until the main thread of `pid` sleeps in `read`.
fn wait_asleep_in_read(pid: u32) {
    let deadline = Instant::now() + DEADLOCK;
    while state_and_call(pid) != ('S', libc::SYS_read) {
        assert!(Instant::now() < deadline, "it never went back to sleep in read: {:?}", state_and_call(pid));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How many `read` calls the main thread of `pid` has returned from (`syscr`, which counts
/// one each time the call returns, interrupted or not).
fn reads(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("syscr:")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_thread_held_in_a_waiting_read_is_back_asleep_in_it_without_being_woken_again() {
    let mut cat = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = cat.id();
    wait_asleep_in_read(pid);
    let before = reads(pid);
    const ROUNDS: u64 = 20;
    for round in 1..=ROUNDS {
        let held = Injector::attached(pid as i32, |held| Ok(held.pid())).unwrap();
        assert_eq!(held, pid as i32);
        wait_asleep_in_read(pid);
        assert_eq!(reads(pid) - before, round, "each hold ended its read once; letting it go did not end it again");
    }
    let mut stdin = cat.stdin.take().unwrap();
    stdin.write_all(b"still reading\n").unwrap();
    drop(stdin);
    let mut out = String::new();
    cat.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out, "still reading\n");
    assert!(cat.wait().unwrap().success());
}
