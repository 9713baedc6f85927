//! Threads that sleep a few microseconds at a time in `nanosleep`, `poll`, `select` and
//! `usleep`, attached by the agent again and again: no call returns `EINTR`, as untraced. A
//! safepoint signals only threads that run, but a thread found running is often asleep again
//! when its signal comes; before the safepoint's handler resumed the wait it ended
//! (`resumed_waits.rs` in `dprobe-inproc`), 30 attaches cut 21 to 26 of these sleeps short.
mod common;

use std::io::BufRead;

use common::c_program_from;

/// Four threads sleeping in a loop, each in its own call, counting the calls that returned
/// `EINTR`; prints `ready`, then the four counts once its standard input is closed.
const SLEEPERS: &str = r#"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>
static volatile long cut_short[4];
__attribute__((noinline)) long work(long x) { __asm__ volatile(""); return x * 3 + 1; }
static void *sleeper(void *arg) {
    long k = (long)arg;
    for (;;) {
        int r;
        struct timespec ts = { 0, 30000 };
        struct timeval tv = { 0, 50 };
        if (k == 0) r = nanosleep(&ts, 0);
        else if (k == 1) r = poll(0, 0, 1);
        else if (k == 2) r = select(0, 0, 0, 0, &tv);
        else r = usleep(40);
        if (r < 0 && errno == EINTR) cut_short[k]++;
        work(k);
    }
    return 0;
}
int main(void) {
    pthread_t t;
    for (long i = 0; i < 4; i++) pthread_create(&t, 0, sleeper, (void *)i);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    printf("%ld %ld %ld %ld\n", cut_short[0], cut_short[1], cut_short[2], cut_short[3]);
    return 0;
}
"#;

const ATTACHES: usize = 15;

#[test]
fn sleeps_of_microseconds_are_never_cut_short_by_the_agent_s_attaches() {
    if !common::wrappers_name_their_calls() {
        return eprintln!("skipped: this C library makes its calls through one function");
    }
    let program = c_program_from("short-sleeps", SLEEPERS, &["-O1", "-pthread"]);
    let (mut child, mut out) = common::start_ready(program);
    let mut line = String::new();
    let pid = child.id().to_string();
    for _ in 0..ATTACHES {
        let o =
            common::dprobe(&["trace", "--engine", "agent", "--count", "-d", "100ms", "-p", &pid, "short-sleeps:work"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "0 0 0 0\n", "calls cut short with EINTR (nanosleep, poll, select, usleep)");
    assert!(child.wait().unwrap().success());
}
