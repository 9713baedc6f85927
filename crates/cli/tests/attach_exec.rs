//! A process attached with `-p` is followed into the programs it executes, as a started
//! command is: the ptrace engine sees its `exec`; under the agent the thread about to `exec`
//! asks first and is watched for that `exec` alone, and the new program gets the agent again.
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::io::Write;
use std::process::{Child, Command, Stdio};

use common::{family, hits, out_file};

/// A shell that waits for a line, then becomes (`exec`) a chain of `levels` shells, each of
/// which runs `family fork 2 3` (2 calls of `work`, 3 in its fork) and executes the next; the
/// last becomes `family exec 2 3`, which executes itself as `family fork 3 3`. Every `family`
/// checks its own sums: a wrong one ends the chain with a status other than 0.
fn waiting_chain(name: &str, levels: u32) -> Child {
    let f = family();
    let chain = out_file(&format!("{name}.sh"));
    let script = format!(
        "n=$1\n[ \"$n\" -gt 0 ] || exec {f} exec 2 3\n{f} fork 2 3 || exit 9\nexec /bin/sh {} $((n - 1))\n",
        chain.display()
    );
    std::fs::write(&chain, script).unwrap();
    let start = format!("read line && exec /bin/sh {} {levels}", chain.display());
    Command::new("/bin/sh").args(["-c", &start]).stdin(Stdio::piped()).spawn().unwrap()
}

/// Calls of `work` in [`waiting_chain`]: 5 a level, then 2 + 3 + 3.
fn chain_calls(levels: u32) -> u64 {
    u64::from(levels) * 5 + 8
}

#[test]
fn an_attached_process_is_followed_into_each_program_it_executes() {
    use common::rounds::Tracing;
    for engine in ["agent", "ptrace"] {
        let mut shell = waiting_chain(&format!("attached-execs-{engine}"), 3);
        let pid = shell.id().to_string();
        let name = format!("attached-execs-{engine}.out");
        let tracing = Tracing::start(&name, &["--engine", engine, "-c", "family:work", "-p", &pid]);
        writeln!(shell.stdin.take().unwrap(), "go").unwrap();
        let status = shell.wait().unwrap();
        // dprobe ends with the process it traced.
        let (code, trace, said) = tracing.end();
        let what = format!("{engine}: {said}\n{trace}");
        assert_eq!(code, Some(0), "{what}");
        assert_eq!(status.code(), Some(0), "{what}");
        assert_eq!(hits(&trace, "family:work"), chain_calls(3), "{what}");
        assert!(!trace.contains("not traced") && !trace.contains("untraced"), "{what}");
    }
}

/// A `kill -9` of dprobe at moments spread over an attached process's chain of `exec`s (while
/// its thread asks, while it is watched, while the agent is loaded into the new program, in
/// between) lets the process run its chain to the end, every program's sums right: dprobe's
/// holder, which outlives it, stops the agent and lets the watched thread go.
#[test]
fn kill_9_of_dprobe_following_an_attached_process_s_execs_lets_it_finish_right() {
    use killing::{become_subreaper, kill_and_reap, start_dprobe_tracing, Moments};
    // (dprobe's holder, orphaned, is then waited for here: its end is part of the try.)
    become_subreaper();
    let mut moments = Moments::new();
    for i in 0..6 {
        let mut shell = waiting_chain(&format!("killed-attached-execs-{i}"), 8);
        let pid = shell.id().to_string();
        let out = out_file(&format!("killed-attached-execs-{i}.out"));
        let err = out_file(&format!("killed-attached-execs-{i}.err"));
        let dprobe = start_dprobe_tracing(&["--engine", "agent", "--count", "family:work", "-p", &pid], &out, &err);
        writeln!(shell.stdin.take().unwrap(), "go").unwrap();
        std::thread::sleep(moments.below(std::time::Duration::from_millis(1500)));
        let ended = kill_and_reap(dprobe);
        let status = shell.wait().unwrap();
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "try {i}: the chain: {status:?} (dprobe's processes: {ended:?})\n{said}");
    }
}
