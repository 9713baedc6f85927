//! A program whose worker blocks every signal (as servers' workers do, to take signals with
//! `sigwait`) and calls a function whose probe stays on `int3` (too short for a jump): the
//! trap is a forced `SIGTRAP`, which kills a thread that blocks it. Traced with the ptrace
//! engine (whose tracer takes the trap first), it finishes with its own result, every call
//! counted. (The agent does not yet keep `SIGTRAP` out of such masks: see the README.)
mod common;

use common::out_file;

const PROGRAM: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
__attribute__((noinline)) int tiny(int x) { return x + 1; }
static void *worker(void *a) {
    (void)a;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, 0);
    long s = 0;
    for (int i = 0; i < 1000; i++)
        s += tiny(i);
    return (void *)s;
}
int main(void) {
    pthread_t t;
    void *r;
    pthread_create(&t, 0, worker, 0);
    pthread_join(t, &r);
    printf("sum=%ld\n", (long)r);
    return 0;
}
"#;

fn program() -> &'static str {
    let src = out_file("blocked_threads.c");
    std::fs::write(&src, PROGRAM).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "blocked-threads", &["-O2", "-pthread"])
}

#[test]
fn a_worker_that_blocks_every_signal_survives_its_int3_hits() {
    let probe = format!("{}:tiny", program());
    let t = common::trace_to_file("ptrace-blocked", &["--engine", "ptrace", "-c", &probe, "--", program()]);
    let what = t.what("ptrace");
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), "sum=500500\n"), "{what}");
    assert_eq!(common::hits(&t.trace, &probe), 1000, "{what}");
}
