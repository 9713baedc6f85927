//! A process that shares its memory with another that is not one of its threads (a child made
//! with `clone(CLONE_VM)` and no `CLONE_THREAD`): dprobe's probes in that memory would kill the
//! other, which it does not trace (a `-p` attach killed the child with `SIGTRAP` every time,
//! under either engine; one to the child killed the parent). The attach is refused, saying
//! why, and both finish as untraced.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::{c_program_from, dprobe_command};

/// Makes a child with `clone(CLONE_VM | SIGCHLD)`; both call `mid` (which calls `leaf`) until
/// a line comes on the standard input; the parent then prints its child's exit status and
/// whether both sums are right.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile int stop;
__attribute__((noinline)) long leaf(long x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((noinline)) long mid(long x) { long r = leaf(x); __asm__ volatile("" ::: "memory"); return r * 2; }
/* 0 where every call returned what it should. */
static long batch(void) {
    long wrong = 0;
    for (int i = 0; i < 1000; i++) wrong += mid(i) - 2 * (i + 1);
    return wrong;
}
static long child_sum, child_calls;
static int child(void *arg) {
    (void)arg;
    do { child_sum += batch(); child_calls += 1000; } while (!stop);
    return child_sum != 0;
}
int main(void) {
    size_t size = 1 << 20;
    char *stack = malloc(size);
    int pid = clone(child, stack + size, CLONE_VM | SIGCHLD, 0);
    if (pid < 0) return 9;
    printf("ready\n");
    fflush(stdout);
    long sum = 0;
    struct pollfd in = { 0, POLLIN, 0 };
    do { sum += batch(); usleep(1000); } while (poll(&in, 1, 0) == 0);
    stop = 1;
    int status;
    waitpid(pid, &status, 0);
    printf("child status %d, sums %s\n", status, sum == 0 && child_sum == 0 && child_calls > 0 ? "right" : "wrong");
    return 0;
}
"#;

fn started() -> Child {
    let program = c_program_from("memory-sharers", PROGRAM, &["-O1"]);
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    child
}

/// The process `clone` made: the parent's child sharing its memory.
fn sharing_child(parent: u32) -> i32 {
    let list = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    list.split_whitespace().next().expect("its child").parse().unwrap()
}

#[test]
fn an_attach_to_a_process_sharing_its_memory_with_another_is_refused_and_both_live() {
    let program = c_program_from("memory-sharers", PROGRAM, &["-O1"]);
    let child = started();
    let shared = sharing_child(child.id());
    for target in [child.id() as i32, shared] {
        for engine in [None, Some("ptrace")] {
            let pid = target.to_string();
            let mut c = dprobe_command();
            c.args(["trace", "-c", "-d", "100ms", "-p", &pid]);
            c.args(engine.map(|e| vec!["--engine", e]).unwrap_or_default());
            let o = c.args([format!("{program}:leaf"), format!("{program}:mid%return")]).output().unwrap();
            let said = String::from_utf8_lossy(&o.stderr);
            assert_ne!(o.status.code(), Some(0), "{target} {engine:?}: {said}");
            assert!(said.contains("shares process") && said.contains("`clone(CLONE_VM)`"), "{said}");
        }
    }
    let mut child = child;
    writeln!(child.stdin.take().unwrap(), "end").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "child status 0, sums right\n");
    assert_eq!(out.status.code(), Some(0));
}
