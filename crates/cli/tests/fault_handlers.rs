//! A program that recovers from its own faults (a JVM's null checks) is never harmed by the
//! agent's loading: dprobe's calls into it return through a fault of their own, which must
//! never come while the thread blocks fault signals (held inside the program's handler), or
//! the kernel resets the program's handler to the default and its next fault kills it.
mod common;

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};

#[test]
fn attaching_the_agent_to_a_program_inside_its_fault_handler_leaves_the_handler_in_place() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/recovers_faults.c");
    let program = dprobe_test_fixtures::c_program(src, "recovers_faults", &["-O1"]);
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id().to_string();
    // Each attach interrupts the program: most often inside its handler (80% of its time).
    for round in 0..6 {
        let t = common::trace_to_file(
            &format!("fault-handler-{round}"),
            &["--engine", "agent", "-d", "200ms", "-c", "-p", &pid, "libc:getpid"],
        );
        assert!(t.trace.contains("goes on untraced"), "round {round}: {}", t.what("agent"));
        assert!(child.try_wait().unwrap().is_none(), "round {round}: the program died: {}", t.what("agent"));
    }
    drop(child.stdin.take());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?} {rest}");
    assert!(rest.starts_with("faults="), "{rest}");
}
