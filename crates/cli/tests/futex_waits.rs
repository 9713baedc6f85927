//! Attaching the agent to a process whose every thread sleeps in `futex` (a JVM, a thread pool
//! at rest): a thread inside one of the program's waits (a condition variable, a semaphore, a
//! join) holds none of the C library's locks and may load the agent; one waiting for a lock
//! may not, and the attach is refused with the program left as it was.
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use common::{dprobe_command, out_file};
use killing::{traced, wait_until};

/// The fixture, killed if a test fails with it running.
struct Program(Child);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// The state letter of each thread of `pid` (`S`: sleeping, `t`: stopped by a tracer).
fn thread_states(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            stat.rsplit(") ").next().unwrap_or("").split(' ').next().unwrap_or("").to_owned()
        })
        .collect()
}

fn attach_to_a_program_waiting_in(mode: &str) {
    let (mut program, mut out) = start(mode);
    let child = &mut program.0;
    let pid = child.id().to_string();
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
    // SAFETY: wakes the program this test started (its handler posts a semaphore).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{mode}: {rest}");
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
    let (mut program, _out) = start("locks");
    let child = &mut program.0;
    let pid = child.id();
    let t = common::trace_to_file("futex-locks", &["--engine", "agent", "-c", "-p", &pid.to_string(), "libc:malloc"]);
    assert_ne!(t.code, Some(0), "{}", t.what("locks"));
    assert!(
        t.stderr.contains("cannot load dprobe's agent")
            && t.stderr.contains("waiting where it holds none of their locks"),
        "{}",
        t.stderr
    );
    assert!(!traced(pid as i32), "left traced");
    assert!(thread_states(pid).iter().all(|s| s == "S"), "{:?}", thread_states(pid));
    assert!(child.try_wait().unwrap().is_none(), "the program ended");
}
