//! A started program watched for its `exec` once let go: how its end is reported.
use std::time::{Duration, Instant};

use dprobe_ptrace::{Injector, Watched};

/// The state letter of process `pid` in `/proc`, if it is there.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The end is said with the program's status and left for its parent to reap: until then
/// `/proc` still shows the program (what names it in the events read after it ended).
#[test]
fn an_ended_program_is_reported_with_its_status_and_left_to_reap() {
    let held = Injector::spawn("/bin/sh", &["-c", "exit 3"]).unwrap();
    let pid = held.pid();
    let mut watch = held.release_watching_exec().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match watch.poll().unwrap() {
            Watched::Ended(status) => break status,
            Watched::Running => {
                assert!(Instant::now() < deadline, "the end was never reported");
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => panic!("`sh -c 'exit 3'` runs no program"),
        }
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3, "status {status:#x}");
    assert_eq!(state_of(pid), Some('Z'), "not reaped: a zombie, still in /proc");
    assert_eq!(dprobe_ptrace::ended_unreaped(pid), Some(status), "the same status, again");
    drop(watch);
    let mut reaped = 0;
    // SAFETY: reaps our own child; `reaped` is valid.
    let r = unsafe { libc::waitpid(pid, &mut reaped, 0) };
    assert_eq!((r, reaped), (pid, status), "its parent reaps it, with the same status");
    assert_eq!(state_of(pid), None);
}
