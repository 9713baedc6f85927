//! Waits that the tracer's interrupt ends with `EINTR` (`epoll_wait`, `sigwaitinfo`, `semop`),
//! where untraced they would have waited on: attaching, for the agent or the ptrace engine,
//! must not make them return early. An `epoll` loop saw one `EINTR` per try to stop it at a
//! safe place for the agent, up to 200, then the attach was refused; the ptrace engine gave it
//! two per attach.
use std::io::{Read, Write};
mod common;

use common::blocked_in;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dprobe_ptrace::{Injector, Tracee};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(120);
const ROUNDS: usize = 5;

fn epoll_reader() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/epoll_reader.c"), "epoll_reader", &["-O1"])
}

/// The reader started with `timeout`, asleep in `epoll_wait`.
fn start(timeout: &str) -> Child {
    let child = Command::new(epoll_reader()).arg(timeout).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    wait_asleep(child.id());
    child
}

/// Wait until the reader sleeps in `epoll_wait`: in the call and asleep (a thread that a line
/// woke, not run yet, is still in the call, and the call then returns the line, not `EINTR`).
fn wait_asleep(pid: u32) {
    let deadline = Instant::now() + DEADLOCK;
    while !(asleep(pid) && blocked_in(pid) == Some(libc::SYS_epoll_wait) && asleep(pid)) {
        assert!(Instant::now() < deadline, "it never waited in epoll_wait");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the main thread of `pid` sleeps (its state `S`).
fn asleep(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S'))
}

/// `ROUNDS` times: `hold(pid)`, then a line for the reader; then the end of its input, and
/// what it printed.
fn read_through(mut child: Child, hold: impl Fn(i32)) -> String {
    let mut input = child.stdin.take().unwrap();
    for _ in 0..ROUNDS {
        hold(child.id() as i32);
        input.write_all(b"line\n").unwrap();
        wait_asleep(child.id());
    }
    drop(input);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    out
}

/// Held for the agent: at the wait, where it holds no lock.
fn held_for_the_agent(pid: i32) {
    let held = Injector::attached(pid, |held| Ok(held.held_where().to_owned())).unwrap();
    assert!(held.ends_with("waiting in `epoll_wait`"), "{held}");
}

#[test]
fn an_epoll_wait_without_a_timeout_is_held_for_the_agent_and_never_ends_early() {
    let out = read_through(start("-1"), held_for_the_agent);
    assert_eq!(out, format!("eintr 0 bytes {}\n", 5 * ROUNDS));
}

#[test]
fn an_epoll_wait_without_a_timeout_never_ends_early_under_the_ptrace_engine() {
    let out = read_through(start("-1"), |pid| Tracee::attach(pid).unwrap().detach().unwrap());
    assert_eq!(out, format!("eintr 0 bytes {}\n", 5 * ROUNDS));
}

/// One with a timeout ends early once per hold, as after a signal (entered again, it would
/// wait its whole timeout again): it is held at once all the same, not refused after 200 tries
/// that each ended it.
#[test]
fn an_epoll_wait_with_a_timeout_is_held_for_the_agent_and_ends_early_once() {
    let out = read_through(start("60000"), held_for_the_agent);
    assert_eq!(out, format!("eintr {ROUNDS} bytes {}\n", 5 * ROUNDS));
}

/// An io_uring loop waiting for completions, held for the agent and attached to by the ptrace
/// engine: still waiting after each (untraced, it waits for ever).
#[test]
fn an_io_uring_wait_for_completions_never_ends_early() {
    let program = dprobe_test_fixtures::c_program(&format!("{FIXTURES}/uring_wait.c"), "uring_wait", &["-O1"]);
    let mut child = Killed(Command::new(program).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let pid = child.0.id();
    let asleep = || blocked_in(pid) == Some(libc::SYS_io_uring_enter);
    let deadline = Instant::now() + DEADLOCK;
    while !asleep() {
        if let Some(status) = child.0.try_wait().unwrap() {
            // Where the kernel gives no io_uring there is nothing to test.
            assert_eq!(status.code(), Some(77), "it could not wait in io_uring_enter");
            eprintln!("io_uring is not available here: not tested");
            return;
        }
        assert!(Instant::now() < deadline, "it never waited in io_uring_enter");
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..ROUNDS {
        let held = Injector::attached(pid as i32, |held| Ok(held.held_where().to_owned())).unwrap();
        assert!(held.ends_with("waiting in `io_uring_enter`"), "{held}");
        Tracee::attach(pid as i32).unwrap().detach().unwrap();
    }
    // Given the time to end and say so, were it going to.
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.0.try_wait().unwrap().is_none(), "its wait ended");
    assert!(asleep(), "still waiting");
    child.0.kill().unwrap();
    let mut out = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out, "");
}

/// A child killed when the test ends, failed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
