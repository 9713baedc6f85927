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
    let (changed, forks, _) = attached_again_and_again("forks_checking_code", &[], &[]);
    assert!(forks > 0);
    assert_eq!(changed, 0, "children whose code was not the files' ({changed} of {forks})");
}

/// A thread that blocks every signal around each `fork` waits there for the agent's session
/// while the agent's thread holds it, maybe making a jump whose safepoint waits for that
/// thread in turn: it waits with the safepoint's signal open. It never answered before: both
/// waited 5 s, the jump stayed on `int3` ("did not take dprobe's safepoint signal", 6 attaches
/// in 10), and where that jump was the agent's own that keeps `SIGTRAP` open, the program was
/// killed by the next `int3` it met with every signal blocked.
#[test]
fn a_thread_forking_with_every_signal_blocked_answers_the_safepoints() {
    let (changed, forks, said) =
        attached_again_and_again("forks_blocking_signals", &["-DBLOCK_SIGNALS"], &["-v", "libc:fork"]);
    assert!(forks > 0);
    assert_eq!(changed, 0, "children whose code was not the files' ({changed} of {forks})");
    assert!(said.iter().any(|stderr| !stderr.contains("blocks SIGTRAP")), "every attach refused: {said:?}");
    for stderr in said {
        assert!(!stderr.contains("did not take dprobe's safepoint signal"), "{stderr}");
    }
}

/// The forking program built as `name` with `flags`, attached [`ATTACHES`] times by the agent
/// with `--no-follow` and `more` (options, then probes after its `work`): how many of its
/// children ran changed code, of how many, and what dprobe said each time. An attach may be
/// refused only because the program's thread blocked `SIGTRAP` as it began.
fn attached_again_and_again(name: &str, flags: &[&str], more: &[&str]) -> (u64, u64, Vec<String>) {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forks_checking_code.c");
    let program = dprobe_test_fixtures::c_program(source, name, &[&["-O2"], flags].concat());
    let (mut child, mut out) = common::start_ready(program);
    let pid = child.id().to_string();
    let probe = format!("{name}:work");
    let (options, probes): (Vec<&str>, Vec<&str>) = more.iter().partition(|a| a.starts_with('-'));
    let mut said = Vec::new();
    for _ in 0..ATTACHES {
        let args = ["trace", "--engine", "agent", "--no-follow", "-c", "-d", "100ms", "-p", &pid];
        let o = common::dprobe(&[&args[..], &options, &[probe.as_str()], &probes].concat());
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success() || stderr.contains("blocks SIGTRAP"), "{stderr}");
        said.push(stderr);
    }
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success(), "{line}");
    let (changed, forks) = line.trim().split_once(" of ").expect("CHANGED of FORKS");
    (changed.parse().unwrap(), forks.parse().unwrap(), said)
}
