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

/// Reads a line, calls `work` 3 times, then executes `/bin/sleep 2` with a raw system call (no
/// C library function the agent can see first). (A program that ended at once could end
/// before dprobe looks: the trace would end with the process, no error to say.)
const RAW_EXEC: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
__attribute__((noinline)) int work(int x) { return x * 3 + 1; }
int main(void) {
    char line[8];
    if (!fgets(line, sizeof line, stdin)) return 2;
    volatile int s = 0;
    for (int i = 0; i < 3; i++) s += work(i);
    char *argv[] = {"/bin/sleep", "2", NULL};
    char *envp[] = {NULL};
    syscall(SYS_execve, "/bin/sleep", argv, envp);
    return 1;
}
"#;

/// An attached process's trace that ends with an error says it once where the summary goes
/// to standard error (its closing line), and on standard error too when it goes to a file.
#[test]
fn a_trace_ended_by_an_error_says_it_once() {
    use std::io::{BufRead, BufReader, Read};
    let src = out_file("raw-exec.c");
    std::fs::write(&src, RAW_EXEC).unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "raw-exec", &["-O1"]);
    const LOST: &str = "not followed; not traced from then on";
    for to_file in [false, true] {
        let mut traced = Command::new(program).stdin(Stdio::piped()).spawn().unwrap();
        let pid = traced.id().to_string();
        let out = out_file(&format!("raw-exec-{to_file}.out"));
        let mut dprobe = common::dprobe_command();
        dprobe.args(["trace", "-v", "--engine", "agent", "--count", "raw-exec:work", "-p", &pid]);
        if to_file {
            dprobe.args(["-o", out.to_str().unwrap()]);
        }
        let mut dprobe = dprobe.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(dprobe.stderr.take().unwrap());
        let mut said = String::new();
        while !said.ends_with("dprobe: tracing\n") {
            assert!(stderr.read_line(&mut said).unwrap() > 0, "dprobe ended before tracing: {said}");
        }
        writeln!(traced.stdin.take().unwrap(), "go").unwrap();
        stderr.read_to_string(&mut said).unwrap();
        assert_eq!(traced.wait().unwrap().code(), Some(0), "`sleep` ran");
        let code = dprobe.wait().unwrap().code();
        let file = std::fs::read_to_string(&out).unwrap_or_default();
        let what = format!("to a file: {to_file}\n{said}\n{file}");
        assert_eq!(code, Some(1), "{what}");
        assert_eq!(said.matches(LOST).count(), 1, "{what}");
        assert_eq!(file.matches(LOST).count(), usize::from(to_file), "{what}");
        assert_eq!(hits(if to_file { &file } else { &said }, "raw-exec:work"), 3, "{what}");
    }
}
