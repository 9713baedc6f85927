//! A trace's probes count the same calls: attached to a program calling one function in a
//! tight loop, `f` and `f%return` count as many calls, and every return of a counted call is
//! seen. The agent places the probes one after another and removes them so (the ptrace engine
//! places them while the program is stopped); before the trace's single window
//! (`trace_window.rs` in the agent), the entry probe counted about 9,000 calls more than the
//! return probe, and the return probe's entry, live before its exit, about 2,000 calls whose
//! returns it did not see.
mod common;

use std::io::BufRead;

use common::{c_program_from, hits, not_seen, returns};

/// Calls `work` in a loop until its standard input is closed, then prints the calls made and
/// their sum.
const LOOP: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static volatile int told;
__attribute__((noinline)) long work(long x) { __asm__ volatile(""); return x * 3 + 1; }
static void *wait_for_the_end(void *unused) {
    char c;
    while (read(0, &c, 1) > 0) {}
    told = 1;
    return unused;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, wait_for_the_end, 0);
    printf("ready\n");
    fflush(stdout);
    long calls = 0, sum = 0;
    while (!told) sum += work(calls++);
    printf("%ld %ld\n", calls, sum);
    return 0;
}
"#;

fn counts_agree(engine: &str) {
    // A program of its own for each test: they run at once.
    let name = format!("one-window-{engine}");
    let program = c_program_from(&name, LOOP, &["-O1", "-pthread"]);
    let (entry, exit) = (format!("{name}:work"), format!("{name}:work%return"));
    let (mut child, mut out) = common::start_ready(program);
    let mut line = String::new();
    let pid = child.id().to_string();
    for _ in 0..3 {
        let o = common::dprobe(&["trace", "--engine", engine, "--count", "-d", "300ms", "-p", &pid, &entry, &exit]);
        let summary = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{engine}: {summary}");
        let (entries, calls) = (hits(&summary, &entry), hits(&summary, &exit));
        let (seen, unseen) = (returns(&summary, &exit), not_seen(&summary, &exit));
        assert!(entries > 100, "{engine}: the trace saw calls:\n{summary}");
        // One call may be under way as the window opens or closes (its entry counted by one
        // probe and not the other, or its return not seen): never more, with one thread.
        assert!(entries.abs_diff(calls) <= 2, "{engine}: the two probes counted different calls:\n{summary}");
        assert!(
            calls.saturating_sub(seen) <= 1 && seen <= calls && unseen <= 1,
            "{engine}: returns not seen:\n{summary}"
        );
    }
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line).unwrap();
    let (calls, sum) =
        line.trim().split_once(' ').map(|(c, s)| (c.parse::<i64>().unwrap(), s.parse::<i64>().unwrap())).unwrap();
    assert_eq!(sum, 3 * calls * (calls - 1) / 2 + calls, "{engine}: the program's own result, as untraced");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_agent_s_probes_count_the_same_calls() {
    counts_agree("agent");
}

#[test]
fn the_ptrace_engine_s_probes_count_the_same_calls() {
    counts_agree("ptrace");
}
