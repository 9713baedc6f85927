//! A program with its own allocator: the agent is never loaded by a thread stopped inside it.
//! The loader's allocations go to that allocator too, so such a load waited for the lock its
//! own thread held, was abandoned after its timeout with the loader's lock taken, and the
//! program's next `dlopen` hung for ever.
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
fn attaching_to_a_program_with_its_own_malloc_leaves_its_loader_usable() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/own_malloc.c");
    let program = dprobe_test_fixtures::c_program(src, "own_malloc", &["-O2", "-fno-builtin", "-pthread"]);
    let mut child = Guarded(Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.0.id() as i32;
    // Each attach interrupts the program about half the time inside its `malloc`.
    for round in 0..4 {
        let t = common::trace_to_file(
            &format!("own-malloc-{round}"),
            &["--engine", "agent", "-d", "100ms", "-c", "-p", &pid.to_string(), "own_malloc:work"],
        );
        assert!(t.trace.contains("goes on untraced"), "round {round}: {}", t.what("agent"));
        assert!(common::hits(&t.trace, "own_malloc:work") > 0, "round {round}: {}", t.trace);
    }
    drop(child.0.stdin.take());
    let rest = rest_of(&child.0, &mut out);
    let status = child.0.wait().unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(0), "dlopen ok\nsummed\n"), "{status:?}");
}
