//! The agent in a command dprobe starts: loaded right after the C library's initialisation
//! (the program keeps its environment and its name, which that initialisation records), and
//! loaded again into each program the process executes.
mod common;

use std::process::Command;

use common::{family, hits, out_file, trace, trace_to_file};

fn agent(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--engine", "agent"];
    all.extend_from_slice(args);
    trace(name, &all)
}

/// Prints what the C library's initialisation records: the arguments, the program's name
/// and its environment, as `main` and the library's functions see them.
fn own_view() -> &'static str {
    let src = out_file("own-view.c");
    let code = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    printf("argc=%d argv0=%s name=%s short=%s\n", argc, argv[0], program_invocation_name,
           program_invocation_short_name);
    printf("value=%s\n", getenv("DPROBE_OWN_VIEW"));
    int n = 0;
    for (char **e = environ; *e; e++) n++;
    printf("environ=%d\n", n);
    return 0;
}
"#;
    std::fs::write(&src, code).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "own-view", &["-O1"])
}

#[test]
fn the_program_keeps_its_arguments_name_and_environment() {
    let program = own_view();
    let untraced = Command::new(program).args(["a", "b"]).env("DPROBE_OWN_VIEW", "42").output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert!(untraced.contains("value=42"), "{untraced}");
    std::env::set_var("DPROBE_OWN_VIEW", "42");
    let t = trace_to_file("agent-own-view", &["--engine", "agent", "--count", "libc:getenv", "--", program, "a", "b"]);
    assert_eq!(t.code, Some(0), "{}", t.trace);
    assert_eq!(t.stdout, untraced, "what the program sees of itself, traced and not\n{}", t.trace);
    assert!(hits(&t.trace, "libc:getenv") >= 1, "{}", t.trace);
}

#[test]
fn a_program_executed_is_probed_even_when_the_first_one_lacks_the_function() {
    // The shell has no `work`: the probe waits, and is placed in the program it executes,
    // which executes itself again (work 5 times, then 6, and 6 in its forked child).
    let script = format!("exec {} exec 5 6", family());
    let (code, out) = agent("agent-exec-chain", &["--count", "family:work", "--", "/bin/sh", "-c", &script]);
    assert_eq!((code, hits(&out, "family:work")), (Some(0), 17), "{out}");
    assert!(!out.contains("not traced") && !out.contains("never loaded"), "{out}");
}

#[test]
fn an_exec_into_a_static_program_is_said_not_traced() {
    let src = out_file("static-exit.c");
    std::fs::write(&src, "int main(void) { return 3; }\n").unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "static-exit", &["-O1", "-static"]);
    let script = format!("exec {program}");
    let (code, out) = agent("agent-exec-static", &["--count", "libc:getenv", "--", "/bin/sh", "-c", &script]);
    // The static program ran, untraced: its status is the command's.
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("it has no dynamic loader (a static program)"), "{out}");
    assert!(out.contains("not traced from then on"), "{out}");
}

/// Calls `tiny` 1,000 times (its probe stays on `int3`: too short for a jump), then prints
/// the sum and whether the program is traced (ptrace). With a directory and its own name, it
/// first starts `/bin/true` three times (`posix_spawn`: children that share its memory until
/// they `exec`), then executes itself again through `execvp` with a `PATH` whose first
/// directory lacks it (an `execve` that fails, then one that works). With a third argument,
/// before that, an `execv` of a file that does not exist (whether it failed with `ENOENT`),
/// then busy until it is untraced (at most 5 s), 1,000 calls more, and whether it is traced.
const TRACER_VIEW: &str = r#"
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
__attribute__((noinline)) int tiny(int x) { return x + 1; }
/* TRACED: whether the process has a tracer (`common::TRACED_C`). */
int main(int argc, char **argv) {
    long s = 0;
    for (int i = 0; i < 1000; i++)
        s += tiny(i);
    if (argc > 2) {
        for (int i = 0; i < 3; i++) {
            pid_t child;
            char *args[] = {"true", NULL};
            int status;
            if (posix_spawn(&child, "/bin/true", NULL, NULL, args, environ) != 0 || waitpid(child, &status, 0) != child)
                return 9;
        }
    }
    printf("sum=%ld traced=%d\n", s, traced());
    fflush(stdout);
    if (argc > 3) {
        int enoent = exec_fails_then_untraced();
        long after = 0;
        for (int i = 0; i < 1000; i++)
            after += tiny(i);
        printf("after a failed exec: sum=%ld traced=%d enoent=%d\n", after, traced(), enoent);
        fflush(stdout);
    }
    if (argc > 2) {
        char path[4096];
        snprintf(path, sizeof path, "/nonexistent-dprobe-dir:%s", argv[1]);
        setenv("PATH", path, 1);
        char *again[] = {argv[2], NULL};
        execvp(argv[2], again);
        return 8;
    }
    return 0;
}
"#;

/// `TRACER_VIEW` built as `name` (from a source of its own: the tests run at once), traced
/// with the agent counting `tiny`, given its directory, its name and `more` as arguments: what
/// dprobe and the program said, and the probe.
fn trace_tracer_view(name: &str, options: &[&str], more: &[&str]) -> (common::Traced, String) {
    let src = out_file(&format!("{name}.c"));
    std::fs::write(&src, common::with_traced(TRACER_VIEW)).unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), name, &["-O2"]);
    let (dir, file) = program.rsplit_once('/').unwrap();
    let probe = format!("{file}:tiny");
    let args: Vec<&str> = ["--engine", "agent", "-c"]
        .iter()
        .chain(options)
        .chain(&[probe.as_str(), "--", program, dir, file])
        .chain(more)
        .copied()
        .collect();
    (trace_to_file(&format!("agent-{name}"), &args), probe)
}

#[test]
fn a_started_program_is_not_traced_between_its_execs() {
    let (t, probe) = trace_tracer_view("tracer-view", &["-v"], &[]);
    let what = t.what("agent");
    assert!(t.stderr.contains("on int3"), "the probe traps: {what}");
    // Both programs ran untraced between their starts and their execs, every hit counted.
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), "sum=500500 traced=0\nsum=500500 traced=0\n"), "{what}");
    assert_eq!(hits(&t.trace, &probe), 2000, "{what}");
    assert!(!t.trace.contains("not traced"), "{what}");
}

/// An `exec` that fails (a file that does not exist) returns, and dprobe lets the program go
/// again (it stayed traced until its next `exec` before); the next `exec` is followed all the
/// same.
#[test]
fn a_started_program_whose_exec_failed_is_let_go_and_its_next_exec_followed() {
    let (t, probe) = trace_tracer_view("tracer-view-failed", &[], &["fail"]);
    let what = t.what("agent");
    let lines = "sum=500500 traced=0\nafter a failed exec: sum=500500 traced=0 enoent=1\nsum=500500 traced=0\n";
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), lines), "{what}");
    assert_eq!(hits(&t.trace, &probe), 3000, "{what}");
    assert!(!t.trace.contains("not traced"), "{what}");
}
