//! Job control in a started program: `SIGSTOP` stops it, `SIGCONT`
//! continues it, and a parent waiting for its child with `WUNTRACED` sees each of the child's
//! stops, as untraced. The ptrace engine traced a started program with `PTRACE_TRACEME` and
//! stopped its threads with `SIGSTOP`s of its own: a program that stopped itself went on at
//! once (it never stopped), and a parent saw 2 of its child's 5 stops. Its threads are now
//! seized, as with `-p`, and a stop is kept with `PTRACE_LISTEN` until the program is
//! continued.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{c_program_from, dprobe_command, hits};

/// `stops`: stops itself 3 times (`SIGSTOP`), calling `step` 1,000 times before each, printing
/// its pid as it stops and the sum at the end. `parent`: its child does the same 5 times and
/// exits with 7; it counts the stops `waitpid(WUNTRACED)` reports, continuing the child after
/// each.
const PROGRAM: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) long step(long x) { __asm__ volatile("" ::: "memory"); return x * 3 + 1; }
static long steps(void) { long s = 0; for (int i = 0; i < 1000; i++) s += step(i); return s; }
int main(int argc, char **argv) {
    long sum = 0;
    if (argc > 1 && strcmp(argv[1], "stops") == 0) {
        for (int r = 0; r < 3; r++) {
            sum += steps();
            printf("stopping %d\n", (int)getpid());
            fflush(stdout);
            raise(SIGSTOP);
        }
        printf("sum %ld\n", sum);
        return 0;
    }
    pid_t child = fork();
    if (child == 0) {
        for (int r = 0; r < 5; r++) { sum += steps(); raise(SIGSTOP); }
        _exit(sum == 5 * steps() ? 7 : 8);
    }
    int stops = 0, status;
    for (;;) {
        if (waitpid(child, &status, WUNTRACED) < 0) { perror("waitpid"); return 1; }
        if (!WIFSTOPPED(status)) break;
        stops++;
        kill(child, SIGCONT);
    }
    printf("stops %d, exit %d\n", stops, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
"#;

fn program() -> &'static str {
    c_program_from("job-control", PROGRAM, &["-O1"])
}

/// A bound against hanging, not a measure.
const DEADLOCK: Duration = Duration::from_secs(60);

/// Processes killed when the test fails: a failed round leaves the program stopped and
/// dprobe waiting for it. (Not when it passes: they are gone, their ids free for others.)
#[derive(Default)]
struct Leftovers(Vec<i32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for &pid in &self.0 {
            // SAFETY: signals a process of this test's, left running by the failure.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The lines a program prints, read by a thread of their own (waited for with a bound).
fn lines_of(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Field `n` (from 1, as `proc(5)` counts them) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    rest.split_whitespace().nth(n - 3).unwrap_or("?").to_owned()
}

/// The CPU time process `pid` has used (user and system, in ticks).
fn cpu_time(pid: i32) -> (String, String) {
    (stat_field(pid, 14), stat_field(pid, 15))
}

#[test]
fn a_started_program_that_stops_itself_stays_stopped_until_continued() {
    let program = program();
    let mut leftovers = Leftovers::default();
    let untraced = Command::new(program).arg("parent").output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert_eq!(untraced.trim(), "stops 5, exit 7", "untraced");
    let untraced_sum = {
        // The same sum, untraced (continued by the test as it stops).
        let mut child = Command::new(program).arg("stops").stdout(Stdio::piped()).spawn().unwrap();
        leftovers.0.push(child.id() as i32);
        let sum = continue_each_stop(&lines_of(child.stdout.take().unwrap()), "untraced", &mut leftovers);
        assert!(child.wait().unwrap().success());
        sum
    };
    for engine in ["ptrace", "agent"] {
        let mut dprobe = dprobe_command()
            .args(["trace", "--engine", engine, "-c", "step", "--", program, "stops"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        leftovers.0.push(dprobe.id() as i32);
        let sum = continue_each_stop(&lines_of(dprobe.stdout.take().unwrap()), engine, &mut leftovers);
        let done = dprobe.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.success(), "{engine}: {stderr}");
        assert_eq!(sum, untraced_sum, "{engine}: the program's own sum");
        assert_eq!(hits(&stderr, "step"), 3000, "{engine}: {stderr}");
    }
    for engine in ["ptrace", "agent"] {
        let done = dprobe_command()
            .args(["trace", "--engine", engine, "-c", "step", "--", program, "parent"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.success(), "{engine}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&done.stdout), untraced, "{engine}: every stop of the child seen");
        // The child's calls (followed), and the one `steps` of its exit check.
        assert_eq!(hits(&stderr, "step"), 6000, "{engine}: {stderr}");
    }
}

/// Read the `stopping PID` lines of a program run with `stops`: at each, the program must
/// stop and stay stopped (a third of a second here: no output, no CPU time) until the test
/// continues it. Returns the sum it prints at the end.
fn continue_each_stop(lines: &Receiver<String>, what: &str, leftovers: &mut Leftovers) -> String {
    for round in 0..3 {
        let line = lines.recv_timeout(DEADLOCK).unwrap_or_else(|e| panic!("{what}: round {round}: {e}"));
        let pid: i32 = line
            .strip_prefix("stopping ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{what}: round {round}: {line:?}"));
        leftovers.0.push(pid);
        let stopped = || matches!(stat_field(pid, 3).as_str(), "T" | "t");
        let since = Instant::now();
        while !stopped() {
            assert!(since.elapsed() < DEADLOCK, "{what}: round {round}: it never stopped ({})", stat_field(pid, 3));
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = cpu_time(pid);
        match lines.recv_timeout(Duration::from_millis(300)) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("{what}: round {round}: went on by itself: {other:?}"),
        }
        assert!(stopped(), "{what}: round {round}: went on by itself ({})", stat_field(pid, 3));
        assert_eq!(cpu_time(pid), before, "{what}: round {round}: ran while stopped");
        // SAFETY: signals the process that printed its pid, stopped and waiting for it.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }
    let line = lines.recv_timeout(DEADLOCK).unwrap_or_else(|e| panic!("{what}: the sum: {e}"));
    assert!(line.starts_with("sum "), "{what}: {line:?}");
    line
}
