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
