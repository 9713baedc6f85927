//! A program with its own allocator: the agent is never loaded by a thread stopped inside it.
//! The loader's allocations go to that allocator too, so such a load waited for the lock its
//! own thread held, was abandoned after its timeout with the loader's lock taken, and the
//! program's next `dlopen` hung for ever.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
fn attaching_to_a_program_with_its_own_malloc_leaves_its_loader_usable() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/own_malloc.c");
    let program = dprobe_test_fixtures::c_program(src, "own_malloc", &["-O2", "-fno-builtin", "-pthread"]);
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id() as i32;
    // Each attach interrupts the program about half the time inside its `malloc`.
    for round in 0..4 {
        let t = common::trace_to_file(
            &format!("own-malloc-{round}"),
            &["--engine", "agent", "-d", "100ms", "-c", "-p", &pid.to_string(), "own_malloc:work"],
        );
        assert!(t.trace.contains("goes on untraced"), "round {round}: {}", t.what("agent"));
        assert!(common::hits(&t.trace, "own_malloc:work") > 0, "round {round}: {}", t.trace);
    }
    drop(child.stdin.take());
    // A harmed program never ends: killed after a minute, so that the test fails, not hangs.
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
    assert_eq!((status.code(), rest.as_str()), (Some(0), "dlopen ok\nsummed\n"), "{status:?}");
}
