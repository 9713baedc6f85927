//! A program whose `SIGTRAP` is blocked (inherited from its parent, or kept through its own
//! `execve`) raises it and takes it with `sigwait`, meeting probes in between: under the ptrace
//! engine its `SIGTRAP` stays pending, as untraced. The kernel queues one standard signal of a
//! kind, so a probe's trap in that thread gave the thread the program's pending `SIGTRAP` in
//! place of the trap's, which dprobe took as its own: `sigwait` then waited for ever, and
//! `sigpending` said nothing was pending. A mask kept through an `execve` was not noted either.
mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{c_program_from, hits};

/// `block`: blocks `SIGTRAP` and executes itself with `run`. `run`: calls `work` 100 times,
/// raises `SIGTRAP`, calls `work` 100 times again, says whether `SIGTRAP` is pending, and takes
/// it with `sigwait` (with a bound: a lost signal is said, not waited for).
const PROGRAM: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) int work(int x) { volatile int y = x; y += 1; return y; }
int main(int argc, char **argv) {
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    if (argc > 1 && strcmp(argv[1], "block") == 0) {
        sigprocmask(SIG_BLOCK, &trap, 0);
        execl(argv[0], argv[0], "run", (char *)0);
        return 127;
    }
    long sum = 0;
    for (int i = 0; i < 100; i++) sum += work(i);
    raise(SIGTRAP);
    for (int i = 0; i < 100; i++) sum += work(i);
    sigset_t pending;
    sigpending(&pending);
    struct timespec bound = { 5, 0 };
    int got = sigtimedwait(&trap, 0, &bound);
    printf("sum %ld, pending %d, waited for %d\n", sum, sigismember(&pending, SIGTRAP), got);
    return 0;
}
"#;

/// `program ARGS` under `dprobe trace --engine ptrace -c work`, its parent (dprobe) started
/// with `SIGTRAP` blocked where `blocked`: what it printed, and dprobe's messages.
fn traced(program: &str, args: &[&str], blocked: bool) -> (String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dprobe"));
    c.args(["trace", "--engine", "ptrace", "-c", "work", "--", program]).args(args);
    if blocked {
        // SAFETY: between fork and exec, only sigprocmask, which is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTRAP);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let o = c.output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {said}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), said)
}

#[test]
fn a_blocked_sigtrap_the_program_raises_stays_pending_through_probe_hits() {
    let program = c_program_from("trap-kept-pending", PROGRAM, &["-O1"]);
    let untraced = Command::new(program).arg("block").output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert_eq!(untraced, "sum 10100, pending 1, waited for 5\n", "untraced");
    // Blocked in the program from its start (its parent's mask), and kept through its exec.
    for (args, blocked) in [(&["run"][..], true), (&["block"][..], false)] {
        let (out, said) = traced(program, args, blocked);
        assert_eq!(out, untraced, "{args:?}: {said}");
        assert_eq!(hits(&said, "work"), 200, "{args:?}: {said}");
    }
}

/// A thread that takes `SIGTRAP`s another thread sends it (a handler counts them) while it
/// calls a function whose probed first instruction is `push %rbp` (emulated: the thread goes
/// on just past it). A signal sent while the thread was stopped at a hit was delivered as it
/// went on there, or once the handler returned there: dprobe took that stop for another hit
/// of the site before it, and pushed again (the program crashed at its second hit).
const SENT_TRAPS: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static volatile long handled;
static volatile int worker, done;
static void count(int signal) { (void)signal; handled++; }
__attribute__((noinline)) int work(int x) { volatile int y = x; y += 1; return y; }
static void *send(void *arg) {
    (void)arg;
    while (!worker) {}
    for (int i = 0; i < 1000 && !done; i++) { syscall(SYS_tgkill, getpid(), worker, SIGTRAP); usleep(100); }
    return 0;
}
int main(void) {
    signal(SIGTRAP, count);
    pthread_t sender;
    pthread_create(&sender, 0, send, 0);
    worker = gettid();
    /* From the first signal on, the calls spread over the sending. */
    while (!handled) {}
    long sum = 0;
    for (int i = 0; i < 20000; i++) {
        sum += work(i % 1000);
        if (i % 20 == 0) usleep(100);
    }
    done = 1;
    pthread_join(sender, 0);
    printf("sum %ld, signals handled %s\n", sum, handled > 0 ? "yes" : "no");
    return 0;
}
"#;

#[test]
fn sigtraps_another_thread_sends_to_a_thread_at_a_probe_are_the_programs() {
    // Without optimization: `work` starts with `push %rbp`.
    let program = c_program_from("sent-traps", SENT_TRAPS, &["-O0", "-pthread"]);
    let untraced = Command::new(program).output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert_eq!(untraced, "sum 10010000, signals handled yes\n", "untraced");
    for _ in 0..3 {
        let (out, said) = traced(program, &[], false);
        assert_eq!(out, untraced, "{said}");
        assert_eq!(hits(&said, "work"), 20000, "{said}");
    }
}
