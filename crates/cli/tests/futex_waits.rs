//! Attaching the agent to a process whose every thread sleeps in `futex` (a JVM, a thread pool
//! at rest): a thread inside one of the program's waits (a condition variable, a semaphore, a
//! join) holds none of the C library's locks and may load the agent; one waiting for a lock
//! may not, and the attach is refused with the program left as it was.
mod common;
#[path = "common/ending.rs"]
mod ending;
#[path = "common/guarded.rs"]
mod guarded;
#[path = "common/killing.rs"]
mod killing;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{dprobe_command, out_file};
use ending::Running as Program;
use guarded::rest_of;
use killing::{traced, wait_until};

/// The fixture started with `mode`, once it said it is ready.
fn start(mode: &str) -> (Program, BufReader<std::process::ChildStdout>) {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waits_in_futex.c");
    let program = dprobe_test_fixtures::c_program(src, "waits_in_futex", &["-O1", "-pthread"]);
    let mut child = Command::new(program).arg(mode).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "{mode}");
    (Program(child), out)
}

/// What each thread of `pid` is doing: its state letter (`S`: sleeping, `t`: stopped by a
/// tracer) and the system call it is in (`/proc/.../syscall`'s first field).
fn threads_of(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| {
            let task = t.unwrap().path();
            let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().unwrap_or("").split(' ').next().unwrap_or("").to_owned();
            let call = std::fs::read_to_string(task.join("syscall")).unwrap_or_default();
            (state, call.split(' ').next().unwrap_or("").trim().to_owned())
        })
        .collect()
}

/// Whether every thread of `pid` sleeps in `futex`.
fn all_asleep_in_futex(pid: u32) -> bool {
    let futex = libc::SYS_futex.to_string();
    threads_of(pid).iter().all(|(state, call)| state == "S" && *call == futex)
}

fn attach_to_a_program_waiting_in(mode: &str) {
    let (mut program, mut out) = start(mode);
    let pid = program.0.id().to_string();
    let (trace, err) = (out_file(&format!("futex-{mode}.trace")), out_file(&format!("futex-{mode}.err")));
    let mut dprobe = dprobe_command()
        .args(["trace", "-v", "-o", trace.to_str().unwrap(), "--engine", "agent", "-c", "-p", &pid])
        .arg("waits_in_futex:work")
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let said = || std::fs::read_to_string(&err).unwrap_or_default();
    wait_until("the agent tracing, or dprobe's end", || {
        said().contains("dprobe: tracing") || dprobe.try_wait().unwrap().is_some()
    });
    assert!(said().contains("dprobe: tracing"), "{mode}: {}", said());
    // The first thread tried is the main one, waiting in the wait `mode` names.
    let held = format!("the agent was loaded by thread {pid} (waits_in_futex), waiting in `futex`");
    assert!(said().contains(&held), "{mode}: {}", said());
    // SAFETY: wakes the program this test started (its handler posts a semaphore).
    assert_eq!(unsafe { libc::kill(program.0.id() as i32, libc::SIGUSR1) }, 0);
    let rest = rest_of(&program.0, &mut out);
    assert_eq!(program.0.wait().unwrap().code(), Some(0), "{mode}: {rest}");
    assert_eq!(rest, format!("{}\n", (0..1000).map(|i| i * 2).sum::<i64>()), "{mode}");
    assert_eq!(dprobe.wait().unwrap().code(), Some(0), "{mode}: {}", said());
    let summary = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(common::hits(&summary, "waits_in_futex:work"), 1000, "{mode}: {summary}");
}

#[test]
fn a_program_whose_threads_all_wait_on_condition_variables_takes_the_agent() {
    // Seen by a frame of `pthread_cond_wait`/`pthread_cond_timedwait` on the stack.
    attach_to_a_program_waiting_in("cond");
}

#[test]
fn a_program_waiting_in_sem_wait_takes_the_agent() {
    // `sem_wait` jumps on to its inner function: seen by the program's call into it.
    attach_to_a_program_waiting_in("sem");
}

#[test]
fn a_program_waiting_in_pthread_join_takes_the_agent() {
    attach_to_a_program_waiting_in("join");
}

#[test]
fn a_program_whose_threads_all_wait_for_locks_is_refused_and_left_as_it_was() {
    let (program, _out) = start("locks");
    let pid = program.0.id();
    // It says it is ready just before its first thread blocks: an interrupt in between would
    // find it in its own code.
    wait_until("both threads asleep in futex", || all_asleep_in_futex(pid));
    let t = common::trace_to_file(
        "futex-locks",
        &["--engine", "agent", "-c", "-d", "1s", "-p", &pid.to_string(), "libc:malloc"],
    );
    assert_ne!(t.code, Some(0), "{}", t.what("locks"));
    assert!(
        t.stderr.contains("cannot load dprobe's agent")
            && t.stderr.contains("At the last stop: threads ")
            && t.stderr.contains(": waiting in `futex` where the C library or the loader may hold a lock"),
        "{}",
        t.stderr
    );
    assert!(!traced(pid as i32), "left traced");
    // Back asleep where they were, once let go.
    wait_until("both threads asleep in futex again", || all_asleep_in_futex(pid));
}

#[test]
fn a_program_whose_sleep_was_resumed_by_restart_syscall_takes_the_agent_again() {
    // A timed sleep interrupted by a stop (the first attach) goes on in `restart_syscall`.
    const SLEEPER: &str = r#"
#include <poll.h>
#include <stdio.h>
int main(void) { printf("ready\n"); fflush(stdout); poll(0, 0, 600000); return 0; }
"#;
    let program = common::c_program_from("sleeps-in-poll", SLEEPER, &["-O1"]);
    let mut child = Program(Command::new(program).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.0.id();
    let in_call = |nr: i64| move || threads_of(pid).iter().all(|(_, call)| *call == nr.to_string());
    wait_until("the program in poll", in_call(libc::SYS_poll));
    for round in 0..2 {
        let t = common::trace_to_file(
            &format!("restarted-sleep-{round}"),
            &["--engine", "agent", "-c", "-d", "200ms", "-p", &pid.to_string(), "libc:malloc"],
        );
        assert!(t.trace.contains("goes on untraced"), "round {round}: {}", t.what("agent"));
        wait_until("the program back asleep, in restart_syscall", in_call(libc::SYS_restart_syscall));
    }
}
