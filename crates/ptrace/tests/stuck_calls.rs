//! A call into a held thread that does not return in time is stopped where it waits, and the
//! thread put back as it was. Where the call was stopped inside a timed wait of its own, the
//! kernel's per-thread restart state is the call's: the program's own sleep, which resumes
//! from that state, must not resume from it.
mod common;

use common::blocked_in;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dprobe_ptrace::Injector;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(120);

fn timed_sleep() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/timed_sleep.c"), "timed_sleep", &["-O1"])
}

fn stalling_library() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/stalls.c"), "libstalls.so", &["-O1", "-shared", "-fPIC"])
}

/// Start `timed_sleep 3`, wait until it sleeps, run `stuck_call` on it (which holds it, makes
/// a call that is found stuck inside its own timed wait, and lets it go), and return what the
/// program printed.
fn sleep_through_a_stuck_call(stuck_call: impl FnOnce(i32) -> String) -> String {
    sleep_through("3", |_| {}, stuck_call)
}

/// As [`sleep_through_a_stuck_call`], sleeping `seconds`, with `first(pid)` run once it
/// sleeps, before the stuck call.
fn sleep_through(seconds: &str, first: impl FnOnce(i32), stuck_call: impl FnOnce(i32) -> String) -> String {
    let untraced = Command::new(timed_sleep()).arg("0").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&untraced.stdout), "0\n");
    let child = Command::new(timed_sleep()).arg(seconds).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + DEADLOCK;
    while blocked_in(pid) != Some(libc::SYS_clock_nanosleep) {
        assert!(Instant::now() < deadline, "it never slept");
        std::thread::sleep(Duration::from_millis(1));
    }
    first(pid as i32);
    let error = stuck_call(pid as i32);
    assert!(error.contains("did not return"), "{error}");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits 60 s, far longer than a call may go without running: found stuck and stopped inside
/// its wait, with the wait's deadline still ahead.
fn stall(held: &mut Injector) -> String {
    held.load_library(stalling_library(), "stall", "60").unwrap_err().to_string()
}

// Resumed from the call's state, the program's sleep would wait on the library's word until
// the call's deadline, then return its ETIMEDOUT (110), a minute late.

#[test]
fn a_sleep_taken_over_by_a_stuck_timed_wait_returns_as_untraced_after_a_detach() {
    let printed = sleep_through_a_stuck_call(|pid| {
        let mut held = Injector::attach(pid).unwrap();
        let error = stall(&mut held);
        held.release().unwrap();
        error
    });
    assert_eq!(printed, "0\n", "the sleep returned as it does untraced");
}

#[test]
fn a_sleep_taken_over_by_a_stuck_timed_wait_returns_as_untraced_when_let_go_still_traced() {
    let printed = sleep_through_a_stuck_call(|pid| Injector::attached(pid, |held| Ok(stall(held))).unwrap());
    assert_eq!(printed, "0\n", "the sleep returned as it does untraced");
}

#[test]
fn a_sleep_already_resumed_once_ends_with_eintr_when_a_stuck_call_took_over_its_state() {
    // Held and let go once: its sleep goes on in `restart_syscall`, from the kernel's state.
    // (Long enough for the second hold to come while it sleeps, on a loaded machine too: it
    // ends at once, with EINTR, when the test passes.)
    let printed = sleep_through(
        "60",
        |pid| Injector::attached(pid, |held| Ok(held.pid())).map(|_| ()).unwrap(),
        |pid| {
            let deadline = Instant::now() + DEADLOCK;
            while blocked_in(pid as u32) != Some(libc::SYS_restart_syscall) {
                assert!(Instant::now() < deadline, "its sleep never went on from the kernel's state");
                std::thread::sleep(Duration::from_millis(1));
            }
            Injector::attached(pid, |held| Ok(stall(held))).unwrap()
        },
    );
    // Which call it continued is not known any more: it ends as after a signal, not on the
    // call's word a minute late.
    assert_eq!(printed, format!("{}\n", libc::EINTR));
}
