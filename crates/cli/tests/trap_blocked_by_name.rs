//! A started program that blocks `SIGTRAP` by name (it uses that signal itself: it sends it
//! and waits for it with `sigwait`): the kernel kills a thread at a trap it blocks, and the
//! agent's probes on `int3` trap. The program was killed by `SIGTRAP` at its first hit after
//! the block. The agent now leaves the program before the block takes effect (its probes
//! removed, dprobe says why), and the program finishes as untraced. (The ptrace engine kills
//! this program too: the block after its start is its documented gap, `trap_mask.rs`.)
mod common;

use common::{c_program_from, dprobe_command, hits};

/// Calls `leaf` 100 times, blocks `SIGTRAP` (with `SIGUSR1`, or alone), calls `leaf` 1,000
/// times, sends itself `SIGTRAP` and takes it with `sigwait`, and says what it got. With
/// `then-exec`, executes itself (`again`) once `SIGTRAP` is blocked: the new program, which
/// keeps the mask, does the same from its 1,000 calls on.
const PROGRAM: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) int leaf(int x) { __asm__ volatile(""); return x + 1; }
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "alone";
    long sum = 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTRAP);
    if (strcmp(mode, "again") == 0) {
        sum = 5050; /* the first program's 100 calls */
    } else {
        for (int i = 0; i < 100; i++) sum += leaf(i);
        if (strcmp(mode, "with-usr1") == 0) sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, 0);
    }
    if (strcmp(mode, "then-exec") == 0) {
        execl(argv[0], argv[0], "again", (char *)0);
        return 127;
    }
    for (int i = 0; i < 1000; i++) sum += leaf(i);
    raise(SIGTRAP);
    int got = 0;
    sigemptyset(&set);
    sigaddset(&set, SIGTRAP);
    sigwait(&set, &got);
    printf("sum %ld, waited for signal %d\n", sum, got);
    return 0;
}
"#;

#[test]
fn a_program_blocking_sigtrap_by_name_is_left_by_the_agent_and_finishes_as_untraced() {
    let program = c_program_from("trap-blocked-by-name", PROGRAM, &["-O1"]);
    for variant in ["alone", "with-usr1", "then-exec"] {
        let untraced = std::process::Command::new(program).arg(variant).output().unwrap();
        assert!(untraced.status.success());
        let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
        assert_eq!(untraced, "sum 505550, waited for signal 5\n", "untraced");
        // The default engine, for a program it starts: the agent.
        let o = dprobe_command().args(["trace", "-c", "leaf", "--", program, variant]).output().unwrap();
        let said = String::from_utf8_lossy(&o.stderr);
        assert_eq!(String::from_utf8_lossy(&o.stdout), untraced, "{variant}: {said}");
        assert!(o.status.success(), "{variant}: {said}");
        // The calls before the block, every one (and none in the program executed with
        // `SIGTRAP` blocked, which the agent is not loaded into).
        assert_eq!(hits(&said, "leaf"), 100, "{variant}: {said}");
        assert!(said.contains("blocked SIGTRAP by name in a thread"), "{variant}: {said}");
        assert!(said.contains("the agent left it first"), "{variant}: {said}");
    }
}

/// Blocks `SIGTRAP` by name around a `memset`, over and over, until its standard input ends,
/// then raises `SIGTRAP`: prints "rounds N wrong W traps T" (W: rounds where it was not
/// blocked inside the block; T: the traps its handler saw).
const BLOCKS_AGAIN_AND_AGAIN: &str = r#"
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
static char buffer[1 << 16];
static volatile sig_atomic_t traps;
static void on_trap(int s) { (void)s; traps++; }
static int input_ended(void) { struct pollfd in = {.fd = 0, .events = POLLIN}; return poll(&in, 1, 0) > 0; }
int main(void) {
    signal(SIGTRAP, on_trap);
    sigset_t trap, old, now;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    unsigned long rounds = 0, wrong = 0;
    while (!input_ended()) {
        sigprocmask(SIG_BLOCK, &trap, &old);
        memset(buffer, (int)rounds, sizeof buffer);
        sigprocmask(SIG_SETMASK, 0, &now);
        wrong += !sigismember(&now, SIGTRAP);
        sigprocmask(SIG_SETMASK, &old, 0);
        memset(buffer, (int)rounds + 1, sizeof buffer);
        rounds++;
    }
    raise(SIGTRAP);
    printf("rounds %lu wrong %lu traps %d\n", rounds, wrong, (int)traps);
    return 0;
}
"#;

/// Attached while it blocks `SIGTRAP` by name again and again, the agent is refused before
/// it loads (a thread held with it blocked), or loads and leaves as the program blocks it:
/// dprobe says which, in words (it said "Connection reset by peer (os error 104)" where the
/// agent left while its probes were being placed), and the program finishes as untraced.
#[test]
fn an_attach_to_a_program_blocking_sigtrap_by_name_again_and_again_says_why_the_agent_cannot_stay() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let program = c_program_from("trap-blocked-again", BLOCKS_AGAIN_AND_AGAIN, &["-O1"]);
    let child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut running = common::Running(child);
    let pid = running.0.id().to_string();
    for attach in 0..5 {
        let o = dprobe_command()
            .args(["trace", "--engine", "agent", "-c", "-d", "100ms", "-p", &pid, "libc:memset"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(!said.contains("os error") && !said.contains("panicked"), "attach {attach}: {said}");
        let why = ["blocked SIGTRAP by name in a thread", "blocks SIGTRAP"];
        assert!(why.iter().any(|w| said.contains(w)), "attach {attach}: {said}");
    }
    drop(running.0.stdin.take());
    let mut printed = String::new();
    running.0.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(running.0.wait().unwrap().success(), "{printed}");
    assert!(printed.starts_with("rounds ") && printed.ends_with(" wrong 0 traps 1\n"), "{printed}");
}
