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

fn own_malloc() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/own_malloc.c");
    dprobe_test_fixtures::c_program(src, "own_malloc", &["-O2", "-fno-builtin", "-pthread"])
}

/// Attach to the started `program` four times, then let it end: its own `dlopen` must work.
fn attach_four_times_then_load(program: &mut Command) {
    let mut child = Guarded(program.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.0.id() as i32;
    // Each attach interrupts the program about half the time inside its `malloc`.
    for round in 0..4 {
        let t = common::trace_to_file(
            &format!("own-malloc-{pid}-{round}"),
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

#[test]
fn attaching_to_a_program_with_its_own_malloc_leaves_its_loader_usable() {
    attach_four_times_then_load(&mut Command::new(own_malloc()));
}

/// Started by the loader (`ld.so ./prog`), the program is a mapped file like a library, and
/// `/proc/PID/exe` the loader: all of its code was taken for the allocator's, and every thread
/// refused.
#[test]
fn a_program_with_its_own_malloc_started_by_the_loader_takes_the_agent_too() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let loader = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/ld-linux"));
    let loader = loader.expect("this test's own loader");
    attach_four_times_then_load(Command::new(loader).arg(own_malloc()));
}
