//! The wait for the agent's start in a process attached with `-p`. The agent sends its shared
//! memory once it has placed the probes it needs for itself, a safepoint each, and a thread
//! that never answers a safepoint makes each wait the safepoint's patience (seconds). dprobe's
//! wait ends at once when the process ends, and when a stop signal comes; the agent, finding
//! its connection gone, then ends its session and removes what it placed.
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::{c_program_from, dprobe_command, function_addr, read_mem};
use killing::wait_until;

/// A program with a thread that spins with `SIGURG` blocked (the signal the agent's
/// safepoints send), so that the agent's start takes seconds. It prints `ready`, then for each
/// line it reads calls `work` 1,000 times and prints the running sum; it ends at the end of
/// its input.
const DEAF_SPINNER: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
__attribute__((noinline)) long work(long x) { return x * 3 + 1; }
static void *spin(void *unused) {
    sigset_t deaf;
    sigemptyset(&deaf);
    sigaddset(&deaf, SIGURG);
    pthread_sigmask(SIG_BLOCK, &deaf, 0);
    for (volatile long i = 0;; i++) {}
    return unused;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, spin, 0);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    long sum = 0;
    while (fgets(line, sizeof line, stdin)) {
        for (long i = 0; i < 1000; i++) sum += work(i);
        printf("sum=%ld\n", sum);
        fflush(stdout);
    }
    return 0;
}
"#;

/// What `DEAF_SPINNER` prints after `rounds` lines.
fn sum_after(rounds: i64) -> String {
    let one: i64 = (0..1000).map(|i| i * 3 + 1).sum();
    format!("sum={}\n", one * rounds)
}

struct Spinner {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Spinner {
    fn start() -> Spinner {
        let program = c_program_from("deaf-spinner", DEAF_SPINNER, &["-O1", "-pthread"]);
        let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let mut spinner = Spinner { child, input, output: BufReader::new(output) };
        assert_eq!(spinner.line(), "ready\n");
        spinner
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line
    }

    /// One round: the line the program printed for it.
    fn round(&mut self) -> String {
        writeln!(self.input, "go").unwrap();
        self.line()
    }

    /// Whether the process has a thread named `name`.
    fn has_thread(&self, name: &str) -> bool {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap();
        tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
    }
}

/// `dprobe trace --engine agent -p PID`, started; it has loaded the agent once the process
/// has the agent's thread.
fn attach_agent(spinner: &Spinner) -> Child {
    let pid = spinner.pid().to_string();
    let child = dprobe_command()
        .args(["trace", "--engine", "agent", "--count", "deaf-spinner:work", "-p", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the agent's thread in the process", || spinner.has_thread("dprobe-agent"));
    child
}

fn ended(mut dprobe: Child) -> (Option<i32>, String) {
    let mut said = String::new();
    dprobe.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    (dprobe.wait().unwrap().code(), said)
}

/// The first bytes of the C library's functions the agent probes for itself while it starts.
fn agent_s_own_sites(pid: i32) -> Vec<(&'static str, Vec<u8>)> {
    ["pthread_sigmask", "sigaction", "vfork", "posix_spawn", "posix_spawnp"]
        .into_iter()
        .map(|name| (name, read_mem(pid, function_addr(pid, name), 16)))
        .collect()
}

#[test]
fn a_stop_signal_while_the_agent_starts_ends_dprobe_and_the_agent_leaves_the_program_whole() {
    let spinner = Spinner::start();
    let before = agent_s_own_sites(spinner.pid());
    let dprobe = attach_agent(&spinner);
    // SAFETY: a signal to the dprobe this test started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) }, 0);
    let (code, said) = ended(dprobe);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{said}");
    assert!(said.contains("dprobe: stopped by SIGTERM before tracing started"), "{said}");
    goes_on_whole(spinner, &before);
}

/// The program runs on, then the agent ends its session: its thread is gone, every byte it
/// wrote (the program's code was `before`) is back, and the program finishes right.
fn goes_on_whole(mut spinner: Spinner, before: &[(&str, Vec<u8>)]) {
    assert_eq!(spinner.round(), sum_after(1));
    wait_until("the agent's end", || !spinner.has_thread("dprobe-agent"));
    assert_eq!(agent_s_own_sites(spinner.pid()), before, "the C library's code, byte for byte");
    assert_eq!(spinner.round(), sum_after(2));
    let Spinner { mut child, input, .. } = spinner;
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_process_that_ends_while_the_agent_starts_is_said_to_have_ended() {
    let mut spinner = Spinner::start();
    let pid = spinner.pid();
    let dprobe = attach_agent(&spinner);
    assert_eq!(spinner.round(), sum_after(1));
    drop(spinner.input);
    assert!(spinner.child.wait().unwrap().success());
    let (code, said) = ended(dprobe);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains(&format!("dprobe: process {pid} ended while dprobe was talking to the agent in it")),
        "{said}"
    );
}

/// A program stopped (`SIGSTOP`) while the agent starts in it never holds dprobe: a stop
/// signal still ends it; once the program goes on (`SIGCONT`) the agent finds dprobe gone,
/// ends its session and leaves the program whole.
#[test]
fn a_program_stopped_while_the_agent_starts_does_not_hold_dprobe() {
    let spinner = Spinner::start();
    let before = agent_s_own_sites(spinner.pid());
    let dprobe = attach_agent(&spinner);
    // SAFETY: a signal to the program this test started.
    assert_eq!(unsafe { libc::kill(spinner.pid(), libc::SIGSTOP) }, 0);
    // SAFETY: a signal to the dprobe this test started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) }, 0);
    let (code, said) = ended(dprobe);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{said}");
    assert!(said.contains("dprobe: stopped by SIGTERM before tracing started"), "{said}");
    // SAFETY: a signal to the program this test started.
    assert_eq!(unsafe { libc::kill(spinner.pid(), libc::SIGCONT) }, 0);
    goes_on_whole(spinner, &before);
}
