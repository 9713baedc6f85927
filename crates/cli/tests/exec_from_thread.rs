//! A started program whose `exec` is made by a thread other than its main one: that thread
//! takes the process's id as the others go, and the kernel tells only its tracer. dprobe
//! follows the new program with either engine (the agent watches the thread that asks before
//! its `exec`); a failed `exec` from a thread leaves the program let go, as from the main one.
//! The same in a process dprobe attached to.
mod common;

use common::{hits, trace_to_file};

const EXEC_FROM_THREAD: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static volatile int seen;
/* A side effect: the compiler calls it each time it is written. */
__attribute__((noinline)) int tiny(int x) {
    seen = x;
    return x + 1;
}
static long calls(void) {
    long s = 0;
    for (int i = 0; i < 1000; i++)
        s += tiny(i);
    return s;
}
/* TRACED: whether the process has a tracer (`common::TRACED_C`). */
static char *self;
static void *worker(void *arg) {
    (void)arg;
    printf("thread: sum=%ld\n", calls());
    int enoent = exec_fails_then_untraced();
    printf("after a failed exec: sum=%ld traced=%d enoent=%d\n", calls(), traced(), enoent);
    fflush(stdout);
    char *again[] = {self, "again", NULL};
    execv(self, again);
    return NULL;
}
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        /* Attached to first: goes on at its first line. */
        char line[8];
        if (!fgets(line, sizeof line, stdin))
            return 7;
    } else if (argc > 1) {
        printf("again: sum=%ld traced=%d\n", calls(), traced());
        return 0;
    }
    self = argv[0];
    printf("main: sum=%ld\n", calls());
    fflush(stdout);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 9;
    pthread_join(t, NULL);
    return 8;
}
"#;

/// The program built as `name`, traced with `engine` counting `tiny`: what dprobe and the
/// program said, and the probe.
fn trace_exec_from_thread(name: &str, engine: &str) -> (common::Traced, String) {
    let program = common::c_program_from(name, &common::with_traced(EXEC_FROM_THREAD), &["-O2", "-pthread"]);
    let probe = format!("{}:tiny", program.rsplit_once('/').unwrap().1);
    let args = ["--engine", engine, "-c", probe.as_str(), "--", program];
    (trace_to_file(&format!("{engine}-{name}"), &args), probe)
}

const OUTPUT: &str = "main: sum=500500\nthread: sum=500500\nafter a failed exec: sum=500500 traced=0 enoent=1\n\
                      again: sum=500500 traced=0\n";

#[test]
fn an_exec_from_a_thread_is_followed_by_the_agent() {
    let (t, probe) = trace_exec_from_thread("exec-from-thread", "agent");
    let what = t.what("agent");
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), OUTPUT), "{what}");
    assert_eq!(hits(&t.trace, &probe), 4000, "{what}");
    assert!(!t.trace.contains("not traced"), "{what}");
}

#[test]
fn an_exec_from_a_thread_is_followed_by_the_ptrace_engine() {
    let (t, probe) = trace_exec_from_thread("exec-from-thread-ptrace", "ptrace");
    let what = t.what("ptrace");
    // Traced all along by this engine: the program sees its tracer.
    let output = OUTPUT.replace("traced=0", "traced=1");
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), output.as_str()), "{what}");
    assert_eq!(hits(&t.trace, &probe), 4000, "{what}");
    assert!(!t.trace.contains("not traced"), "{what}");
}

#[test]
fn an_exec_from_a_thread_of_an_attached_process_is_followed_by_either_engine() {
    use common::rounds::Tracing;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let name = "exec-from-thread-attached";
    let program = common::c_program_from(name, &common::with_traced(EXEC_FROM_THREAD), &["-O2", "-pthread"]);
    let probe = format!("{name}:tiny");
    for engine in ["agent", "ptrace"] {
        let mut child = Command::new(program).arg("wait").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id().to_string();
        let tracing = Tracing::start(&format!("{name}-{engine}"), &["--engine", engine, "-c", &probe, "-p", &pid]);
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let status = child.wait().unwrap();
        let (code, trace, said) = tracing.end();
        let what = format!("{engine}: {said}\n{trace}\n{stdout}");
        // Traced all along by the ptrace engine: the program sees its tracer.
        let output = if engine == "ptrace" { OUTPUT.replace("traced=0", "traced=1") } else { OUTPUT.to_owned() };
        assert_eq!((code, status.code(), stdout.as_str()), (Some(0), Some(0), output.as_str()), "{what}");
        assert_eq!(hits(&trace, &probe), 4000, "{what}");
        assert!(!trace.contains("not traced"), "{what}");
    }
}
