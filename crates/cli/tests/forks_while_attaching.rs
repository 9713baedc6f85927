//! A program that forks again and again, attached by the agent again and again with
//! `--no-follow`: every child runs the files' code, whenever it was forked. The agent's own
//! probes (on `posix_spawn`, `pthread_sigmask`, `vfork`, the id changes) went in before its
//! session was live, where a `fork` neither waited for them nor had its child remove them:
//! a child forked then kept them, with no agent thread of its own (1 child in each of 10
//! attaches).
mod common;

use std::io::BufRead;

const ATTACHES: usize = 10;

#[test]
fn children_forked_while_the_agent_starts_run_the_files_code() {
    let program = dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forks_checking_code.c"),
        "forks_checking_code",
        &["-O2"],
    );
    let (mut child, mut out) = common::start_ready(program);
    let pid = child.id().to_string();
    for _ in 0..ATTACHES {
        let args = ["trace", "--engine", "agent", "--no-follow", "-c", "-d", "100ms", "-p", &pid];
        let o = common::dprobe(&[&args[..], &["forks_checking_code:work"]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let (changed, forks) = line.trim().split_once(" of ").expect("CHANGED of FORKS");
    assert!(forks.parse::<u64>().unwrap() > 0, "{line}");
    assert_eq!(changed, "0", "children whose code was not the files': {line}");
}
