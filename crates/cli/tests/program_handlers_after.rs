//! A program that installs its own handlers for `SIGTRAP` and the fault signals once it runs
//! (as a crash reporter does at its start), after the agent's: dprobe's traps stay dprobe's
//! (a probe on `int3` counts every hit), and the program's own signals go to its handlers:
//! `raise`, its own `int3`, a real fault its handler repairs. `sigaction` answers the program
//! with its own handlers, as untraced; a reset to the default is honoured too. Both engines,
//! output as untraced.
mod common;

use common::trace_to_file;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile sig_atomic_t traps, faults;
static char *page;
static void on_trap(int sig, siginfo_t *info, void *uc) { (void)sig; (void)info; (void)uc; traps++; }
static void on_segv(int sig, siginfo_t *info, void *uc) {
    (void)sig; (void)uc;
    faults++;
    if ((char *)info->si_addr == page)
        mprotect(page, 4096, PROT_READ | PROT_WRITE);
}
/* A branch into its first bytes keeps a probe here on int3. */
long looped(long n);
__asm__(".text\n.globl looped\n.type looped,@function\nlooped:\n xor %eax, %eax\n1: add %rdi, %rax\n dec %rdi\n jnz 1b\n ret\n.size looped, .-looped\n");
int main(void) {
    struct sigaction sa, now;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGTRAP, &sa, 0);
    sa.sa_sigaction = on_segv;
    sigaction(SIGSEGV, &sa, 0);
    sigaction(SIGTRAP, 0, &now);
    int own_trap = now.sa_sigaction == on_trap && (now.sa_flags & SA_SIGINFO);
    unsigned trap_flags = now.sa_flags;
    sigaction(SIGSEGV, 0, &now);
    int own_segv = now.sa_sigaction == on_segv;
    long s = 0;
    for (int i = 0; i < 100; i++) s += looped(3);
    raise(SIGTRAP);
    __asm__ volatile("int3");
    page = mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    page[0] = 7;
    for (int i = 0; i < 100; i++) s += looped(2);
    signal(SIGTRAP, SIG_DFL);
    sigaction(SIGTRAP, 0, &now);
    int reset = now.sa_handler == SIG_DFL;
    printf("own %d %d flags %x sum %ld traps %d faults %d page %d reset %d\n", own_trap, own_segv, trap_flags, s,
           (int)traps, (int)faults, page[0], reset);
    fflush(stdout);
    raise(SIGTRAP); /* the default now: the program ends as untraced */
    return 0;
}
"#;

#[test]
fn handlers_the_program_installs_after_dprobes_get_its_signals_and_dprobe_its_traps() {
    let program = common::c_program_from("handlers-after", PROGRAM, &["-O1"]);
    let expected = killed_as_untraced(program, "looped", 200, libc::SIGTRAP);
    assert!(
        expected.starts_with("own 1 1 flags ") && expected.ends_with(" sum 900 traps 2 faults 1 page 7 reset 1\n"),
        "{expected}"
    );
}

/// `program` untraced, killed by `signal`, then traced by each engine with a probe on its
/// `function`, hit `hits` times: the same output and the same death. Returns the output.
fn killed_as_untraced(program: &str, function: &str, hits: u64, signal: i32) -> String {
    let untraced = std::process::Command::new(program).output().unwrap();
    let expected = String::from_utf8_lossy(&untraced.stdout).into_owned();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(untraced.status.signal(), Some(signal), "untraced: {expected}");
    let name = program.rsplit_once('/').unwrap().1;
    let probe = format!("{name}:{function}");
    for engine in ["agent", "ptrace"] {
        let t = trace_to_file(&format!("{name}-{engine}"), &["--engine", engine, "-c", &probe, "--", program]);
        let what = t.what(engine);
        assert_eq!(t.stdout, expected, "{what}");
        assert_eq!(t.code, Some(128 + signal), "{what}");
        let how = format!("killed by {}", nix::sys::signal::Signal::try_from(signal).unwrap().as_str());
        assert!(t.trace.contains(&how), "{what}");
        assert_eq!(common::hits(&t.trace, &probe), hits, "{what}");
    }
    expected
}

/// A crash reporter: a one-shot `SIGSEGV` handler (`SA_RESETHAND`) with `SIGUSR1` in its mask,
/// that says what it sees and returns; the fault comes again and, the action reset, kills the
/// program.
const CRASH_REPORTER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t caught;
__attribute__((noinline)) int work(int x) { __asm__ volatile("" : "+r"(x)); return x + 1; }
static void reporter(int sig) {
    (void)sig;
    sigset_t during;
    sigprocmask(SIG_BLOCK, NULL, &during);
    struct sigaction now;
    sigaction(SIGSEGV, NULL, &now);
    char line[96];
    int n = snprintf(line, sizeof line, "caught %d usr1 blocked %d segv blocked %d reset %d\n", (int)++caught,
                     sigismember(&during, SIGUSR1), sigismember(&during, SIGSEGV), now.sa_handler == SIG_DFL);
    write(1, line, n);
    if (caught > 3)
        _exit(3); /* caught for ever: the action was not reset */
}
int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = reporter;
    sa.sa_flags = SA_RESETHAND;
    sigaddset(&sa.sa_mask, SIGUSR1);
    sigaction(SIGSEGV, &sa, NULL);
    long s = 0;
    for (int i = 0; i < 100; i++) s += work(i);
    printf("sum %ld\n", s);
    fflush(stdout);
    *(volatile int *)0 = 1;
    return 0;
}
"#;

#[test]
fn a_one_shot_fault_handler_runs_once_with_its_mask_and_the_fault_then_kills() {
    let program = common::c_program_from("crash-reporter", CRASH_REPORTER, &["-O1"]);
    let expected = killed_as_untraced(program, "work", 100, libc::SIGSEGV);
    assert_eq!(expected, "sum 5050\ncaught 1 usr1 blocked 1 segv blocked 1 reset 1\n");
}
