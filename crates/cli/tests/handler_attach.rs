//! The agent is never loaded from inside one of the program's signal handlers: `dlopen` is not
//! async-signal-safe, and the handler may have interrupted `malloc`. A single-threaded
//! program's `malloc` takes no lock, so such a load re-entered it halfway through a change,
//! and the program aborted later ("corrupted size vs. prev_size").
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
fn a_program_asleep_in_its_signal_handler_is_refused_the_agent_and_finishes_unharmed() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sleeps_in_handler.c");
    let program = dprobe_test_fixtures::c_program(src, "sleeps_in_handler", &["-O2"]);
    let mut child = Command::new(program).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id() as i32;
    // SAFETY: signals the program this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "in handler\n");
    // Its only thread sleeps in `nanosleep`, a system call that waits, inside the handler.
    let t =
        common::trace_to_file("handler-attach", &["--engine", "agent", "-c", "-p", &pid.to_string(), "libc:getpid"]);
    // SAFETY: as above; the handler returns and the loop ends.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    // A program harmed may never end (the old code's loads hung it, 3 of 3): killed after a
    // minute, so that the test fails rather than hangs.
    let (ended, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            // SAFETY: the program is not reaped before this thread is joined: the pid is its.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = ended.send(());
    watchdog.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(0), "done\n"), "{status:?}");
    assert_ne!(t.code, Some(0), "{}", t.what("attach"));
    assert!(t.stderr.contains("not in a signal handler"), "{}", t.stderr);
}
