//! Threads that sleep a few microseconds at a time in `nanosleep`, `poll`, `select` and
//! `usleep`, or wait without a timeout for a descriptor another thread makes ready again and
//! again, attached by the agent again and again: no call returns `EINTR`, as untraced. A
//! safepoint signals only threads that run, but a thread found running is often asleep again
//! when its signal comes; before the safepoint's handler resumed the wait it ended
//! (`resumed_waits.rs` in `dprobe-inproc`), 30 attaches cut 21 to 26 of these sleeps short,
//! and 15 attaches 15 to 25 of each kind of wait without a timeout.
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

/// Four threads waiting without a timeout (`epoll_wait`, `poll`, `select`, `ppoll`) for their
/// own `eventfd`, which a fifth thread makes ready again and again, counting the waits that
/// returned `EINTR`; prints `ready`, then the four counts once its standard input is closed.
const WAITERS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <unistd.h>
static volatile long cut_short[4];
static int ready[4];
__attribute__((noinline)) long work(long x) { __asm__ volatile(""); return x * 3 + 1; }
static void *waiter(void *arg) {
    long k = (long)arg;
    int ep = epoll_create1(0);
    struct epoll_event in = { EPOLLIN, { .u64 = 0 } };
    epoll_ctl(ep, EPOLL_CTL_ADD, ready[k], &in);
    for (;;) {
        int r;
        struct pollfd p = { ready[k], POLLIN, 0 };
        struct epoll_event out;
        fd_set set;
        FD_ZERO(&set);
        FD_SET(ready[k], &set);
        if (k == 0) r = epoll_wait(ep, &out, 1, -1);
        else if (k == 1) r = poll(&p, 1, -1);
        else if (k == 2) r = select(ready[k] + 1, &set, 0, 0, 0);
        else r = ppoll(&p, 1, 0, 0);
        unsigned long count;
        if (r < 0 && errno == EINTR) cut_short[k]++;
        else read(ready[k], &count, 8);
        work(k);
    }
    return 0;
}
static void *waker(void *arg) {
    for (;;)
        for (int k = 0; k < 4; k++) {
            unsigned long one = 1;
            write(ready[k], &one, 8);
        }
    return arg;
}
int main(void) {
    pthread_t t;
    for (long i = 0; i < 4; i++) ready[i] = eventfd(0, 0);
    for (long i = 0; i < 4; i++) pthread_create(&t, 0, waiter, (void *)i);
    pthread_create(&t, 0, waker, 0);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    printf("%ld %ld %ld %ld\n", cut_short[0], cut_short[1], cut_short[2], cut_short[3]);
    return 0;
}
"#;

const ATTACHES: usize = 15;

/// Whether the C library loads a call's number just before its `syscall` in
/// `clock_nanosleep` (glibc up to 2.40), the shape the safepoint's handler recognizes; glibc
/// 2.41 and later make a threaded program's calls through one function, where it does not.
fn wrappers_name_their_calls() -> bool {
    use std::os::unix::fs::FileExt;
    // SAFETY: dlsym with a valid name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"clock_nanosleep".as_ptr()) } as u64;
    let mut code = [0u8; 160];
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    f != 0
        && mem.read_exact_at(&mut code, f).is_ok()
        && code.windows(7).any(|w| w[0] == 0xb8 && w[1..5] == 230u32.to_le_bytes() && w[5..] == [0x0f, 0x05])
}

/// Program `name` (built from `source`) attached [`ATTACHES`] times by the agent, a probe on its
/// `work`: the line it prints at its end.
fn counts_after_attaches(name: &str, source: &str) -> String {
    let program = c_program_from(name, source, &["-O1", "-pthread"]);
    let (mut child, mut out) = common::start_ready(program);
    let pid = child.id().to_string();
    let probe = format!("{name}:work");
    for _ in 0..ATTACHES {
        let o = common::dprobe(&["trace", "--engine", "agent", "--count", "-d", "100ms", "-p", &pid, &probe]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    drop(child.stdin.take());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    line
}

#[test]
fn sleeps_of_microseconds_are_never_cut_short_by_the_agent_s_attaches() {
    if !wrappers_name_their_calls() {
        return eprintln!("skipped: this C library makes its calls through one function");
    }
    let counts = counts_after_attaches("short-sleeps", SLEEPERS);
    assert_eq!(counts, "0 0 0 0\n", "calls cut short with EINTR (nanosleep, poll, select, usleep)");
}

#[test]
fn waits_without_a_timeout_are_never_cut_short_by_the_agent_s_attaches() {
    if !wrappers_name_their_calls() {
        return eprintln!("skipped: this C library makes its calls through one function");
    }
    let counts = counts_after_attaches("endless-waits", WAITERS);
    assert_eq!(counts, "0 0 0 0\n", "calls cut short with EINTR (epoll_wait, poll, select, ppoll)");
}
