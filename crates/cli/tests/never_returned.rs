//! Calls that never return: one leaves its thread (`pthread_exit`), one ends the process
//! (`exit`). Each engine tells both as returns not seen: every call returned or is told.
mod common;

use common::{c_program_from, hits, not_seen, returns, trace};

const SOURCE: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void leave(int thread) {
    if (thread)
        pthread_exit(0);
    printf("bye\n");
    exit(0);
}
static void *run(void *arg) { (void)arg; leave(1); return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, run, 0);
    pthread_join(t, 0);
    leave(0);
}
"#;

#[test]
fn a_call_that_leaves_its_thread_or_ends_the_process_is_told_as_not_seen() {
    let program = c_program_from("never-returned", SOURCE, &["-O1", "-pthread"]);
    let probe = "never-returned:leave%return";
    for engine in ["ptrace", "agent"] {
        let (code, out) =
            trace(&format!("never-returned-{engine}"), &["--engine", engine, "--count", probe, "--", program]);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let figures = (hits(&out, probe), returns(&out, probe), not_seen(&out, probe));
        assert_eq!(figures, (2, 0, 2), "{engine}\n{out}");
    }
}
