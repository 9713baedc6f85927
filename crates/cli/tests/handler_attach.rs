//! The agent is never loaded from inside one of the program's signal handlers: `dlopen` is not
//! async-signal-safe, and the handler may have interrupted `malloc`. A single-threaded
//! program's `malloc` takes no lock, so such a load re-entered it halfway through a change,
//! and the program aborted later ("corrupted size vs. prev_size").
mod common;
#[path = "common/ending.rs"]
mod ending;
#[path = "common/guarded.rs"]
mod guarded;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ending::Running as Guarded;
use guarded::rest_of;

#[test]
fn a_program_asleep_in_its_signal_handler_is_refused_the_agent_and_finishes_unharmed() {
    refused_in_its_handler("1000000");
}

/// Sleeps of 2 µs in the handler: the last of the attach's tries often stops the thread
/// between two of them, outside a wait; the refusal still says what no try gets past.
#[test]
fn a_program_napping_in_its_signal_handler_is_refused_for_its_handler() {
    refused_in_its_handler("2000");
}

fn refused_in_its_handler(nap_ns: &str) {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sleeps_in_handler.c");
    let program = dprobe_test_fixtures::c_program(src, "sleeps_in_handler", &["-O2"]);
    let mut child = Guarded(Command::new(program).arg(nap_ns).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.0.id() as i32;
    // SAFETY: signals the program this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "in handler\n");
    // Its only thread sleeps in `nanosleep`, a system call that waits, inside the handler.
    let t = common::trace_to_file(
        "handler-attach",
        &["--engine", "agent", "-c", "-d", "1s", "-p", &pid.to_string(), "libc:getpid"],
    );
    // SAFETY: as above; the handler returns and the loop ends.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    let rest = rest_of(&child.0, &mut out);
    let status = child.0.wait().unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(0), "done\n"), "{status:?}");
    assert_ne!(t.code, Some(0), "{}", t.what("attach"));
    assert!(t.stderr.contains(&format!("At the last stop: thread {pid} (")), "{}", t.stderr);
    assert!(t.stderr.contains("): in a signal handler"), "the reason of its only thread: {}", t.stderr);
}
