//! A program's `SIGTRAP` action is still its own after dprobe's traps under the ptrace engine.
//! A trap is a forced signal: in a thread that blocks `SIGTRAP`, or in a program that ignores
//! it, the kernel sets the action to the default for the whole process before dprobe sees the
//! stop. The program's next `SIGTRAP` would then kill it. dprobe puts the action back before
//! the program's own `SIGTRAP` is delivered and as it lets the program go.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{c_program_from, dprobe_command, hits, out_file};

/// Modes:
/// - `attach-handled`: a handler, `SIGTRAP` blocked in the one thread, which calls `step`
///   until `SIGUSR1`;
/// - `attach-ignored`: `SIGTRAP` ignored, the same loop;
/// - `attach-reading`: `SIGTRAP` ignored, one thread calls `step` while the main thread
///   waits in `read` for a byte `x` on its standard input (a call the kernel restarts);
/// - `threads`: a handler, then a thread that blocks every signal calls `step` 1,000 times;
/// - `handler-steps`: a handler that calls `step` (with `SIGTRAP` blocked, as in any handler
///   of its own signal), and two `SIGTRAP`s raised: prints how many its handler saw;
/// - `spawns-then-handler-steps`: the same, with a `system("true")` between the handler and
///   the traps (its child, which shares the memory, sets every handler to the default);
/// - `exec-ignored`: ignores `SIGTRAP` and executes itself as `ignored`, which calls `step`
///   1,000 times;
/// - `spawn-ignored`: ignores `SIGTRAP` and starts itself as `ignored` with `posix_spawn`,
///   then ends as its child did.
///
/// The others end by unblocking `SIGTRAP`, raising one, and printing whether its action is the one
/// it set and how many traps its handler saw (exit 0: both as set).
const PROGRAM: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
static volatile sig_atomic_t traps;
static volatile long count;
static void on_trap(int s) { (void)s; traps++; }
__attribute__((noinline)) long step(long x) { count++; __asm__ volatile("" ::: "memory"); return x + 1; }
static void on_trap_stepping(int s) { (void)s; traps++; step(0); }
static void handle(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_trap;
    sigaction(SIGTRAP, &sa, 0);
}
static void *worker(void *arg) {
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, 0);
    long a = 0;
    for (int i = 0; i < 1000; i++) a = step(a);
    return 0;
}
static volatile int stop;
static void *looping(void *arg) {
    (void)arg;
    long a = 0;
    while (!stop) a = step(a);
    return 0;
}
static int end(int handled) {
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    sigprocmask(SIG_UNBLOCK, &trap, 0);
    raise(SIGTRAP);
    struct sigaction now;
    sigaction(SIGTRAP, 0, &now);
    int kept = handled ? now.sa_handler == on_trap : now.sa_handler == SIG_IGN;
    printf("kept=%d traps=%d\n", kept, (int)traps);
    return kept && traps == handled ? 0 : 1;
}
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "attach-handled") || !strcmp(mode, "attach-ignored")) {
        int handled = !strcmp(mode, "attach-handled");
        sigset_t s, go;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        if (handled) {
            handle();
            sigaddset(&s, SIGTRAP);
        } else {
            signal(SIGTRAP, SIG_IGN);
        }
        sigprocmask(SIG_BLOCK, &s, 0);
        sigemptyset(&go);
        sigaddset(&go, SIGUSR1);
        printf("ready\n");
        fflush(stdout);
        struct timespec wait = {0, 1000000};
        long a = 0;
        do { a = step(a); } while (sigtimedwait(&go, 0, &wait) != SIGUSR1);
        return end(handled);
    }
    if (!strcmp(mode, "attach-reading")) {
        signal(SIGTRAP, SIG_IGN);
        pthread_t t;
        pthread_create(&t, 0, looping, 0);
        printf("ready\n");
        fflush(stdout);
        char c = 0;
        ssize_t n = read(0, &c, 1);
        if (n != 1 || c != 'x') {
            printf("read=%zd errno=%d\n", n, n < 0 ? errno : 0);
            return 1;
        }
        stop = 1;
        pthread_join(t, 0);
        return end(0);
    }
    if (!strcmp(mode, "threads")) {
        handle();
        pthread_t t;
        pthread_create(&t, 0, worker, 0);
        pthread_join(t, 0);
        return end(1);
    }
    if (!strcmp(mode, "handler-steps") || !strcmp(mode, "spawns-then-handler-steps")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_trap_stepping;
        sigaction(SIGTRAP, &sa, 0);
        if (strcmp(mode, "handler-steps") && system("true") != 0)
            return 3;
        raise(SIGTRAP);
        raise(SIGTRAP);
        printf("traps=%d\n", (int)traps);
        return traps == 2 ? 0 : 1;
    }
    if (!strcmp(mode, "exec-ignored")) {
        signal(SIGTRAP, SIG_IGN);
        execl(argv[0], argv[0], "ignored", (char *)0);
        return 2;
    }
    if (!strcmp(mode, "spawn-ignored")) {
        signal(SIGTRAP, SIG_IGN);
        char *args[] = {argv[0], "ignored", 0};
        pid_t child;
        int status;
        if (posix_spawn(&child, argv[0], 0, 0, args, environ) || waitpid(child, &status, 0) != child)
            return 2;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (!strcmp(mode, "ignored")) {
        long a = 0;
        for (int i = 0; i < 1000; i++) a = step(a);
        return end(0);
    }
    return 2;
}
"#;

fn program() -> &'static str {
    c_program_from("trap-action-kept", PROGRAM, &["-O1", "-pthread"])
}

/// The program, killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attach to the program in `mode` for 300 ms, then let it end (`end`, given the process)
/// and check what it printed last.
fn attached_then_let_go(mode: &str, end: fn(&mut std::process::Child), expected: &str) {
    let program = program();
    let mut running =
        Running(Command::new(program).arg(mode).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let child = &mut running.0;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id().to_string();
    let file = out_file(&format!("trap-action-{mode}.trace"));
    let spec = format!("{program}:step");
    let o = dprobe_command()
        .args(["trace", "--engine", "ptrace", "--count", "-d", "300ms", "-o", file.to_str().unwrap(), "-p", &pid])
        .arg(&spec)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{}\n{summary}", String::from_utf8_lossy(&o.stderr));
    assert!(hits(&summary, &spec) > 0, "{summary}");
    end(child);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((rest.as_str(), status.code()), (expected, Some(0)), "{status:?}");
}

/// The program waits for `SIGUSR1`.
fn send_usr1(child: &mut std::process::Child) {
    // SAFETY: signals our own child, which waits for SIGUSR1.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
}

#[test]
fn a_handler_of_a_program_whose_thread_blocks_sigtrap_is_back_after_an_attach() {
    attached_then_let_go("attach-handled", send_usr1, "kept=1 traps=1\n");
}

#[test]
fn an_ignored_sigtrap_is_ignored_again_after_an_attach() {
    attached_then_let_go("attach-ignored", send_usr1, "kept=1 traps=0\n");
}

/// The call that puts the action back is made by a thread taken out of its `read`, which must
/// go back into it as if never taken out.
#[test]
fn an_ignored_sigtrap_is_put_back_through_a_thread_waiting_in_a_restarted_call() {
    let write_x = |child: &mut std::process::Child| {
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"x").unwrap();
    };
    attached_then_let_go("attach-reading", write_x, "kept=1 traps=0\n");
}

/// Start the program in `mode` under dprobe: its output, and the hits of `step`.
fn started(mode: &str) -> (String, u64) {
    started_program(program(), &[mode])
}

/// Start `program` with `args` under dprobe's ptrace engine, counting its `step` (it must
/// exit 0): its output, and the hits.
fn started_program(program: &str, args: &[&str]) -> (String, u64) {
    started_with("ptrace", false, program, args)
}

/// [`started_program`] under `engine`, dprobe (and so the program) started with `SIGTRAP`
/// ignored where `ignoring`.
fn started_with(engine: &str, ignoring: bool, program: &str, args: &[&str]) -> (String, u64) {
    use std::os::unix::process::CommandExt;
    let name = format!("trap-action-{engine}-{ignoring}-{}.trace", args.first().unwrap_or(&"started"));
    let file = out_file(&name);
    let spec = format!("{program}:step");
    let mut command = dprobe_command();
    if ignoring {
        // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGTRAP, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let o = command
        .args(["trace", "--engine", engine, "--count", "-o", file.to_str().unwrap(), &spec, "--", program])
        .args(args)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&file).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{engine}, {args:?}: {stdout}\n{stderr}\n{summary}");
    (stdout, hits(&summary, &spec))
}

#[test]
fn a_handler_set_before_a_thread_that_blocks_every_signal_runs_for_the_programs_own_trap() {
    assert_eq!(started("threads"), ("kept=1 traps=1\n".to_owned(), 1000));
}

/// The handler is set while traced, with no thread started after: seen as the program sets it.
#[test]
fn a_trap_handler_that_calls_a_probed_function_runs_for_each_trap() {
    assert_eq!(started("handler-steps"), ("traps=2\n".to_owned(), 2));
}

/// The child of `system` (a `posix_spawn`) sets its own copy of the action to the default, not
/// the program's.
#[test]
fn a_trap_handler_is_the_programs_after_a_child_that_shares_its_memory_reset_its_own() {
    assert_eq!(started("spawns-then-handler-steps"), ("traps=2\n".to_owned(), 2));
}

#[test]
fn a_sigtrap_ignored_across_exec_stays_ignored_through_the_hits() {
    assert_eq!(started("exec-ignored"), ("kept=1 traps=0\n".to_owned(), 1000));
}

/// The agent takes `SIGTRAP` over as it loads, and passes the program's own on as the program
/// would take it: "ignore" is kept through the start's traps (which set it to the default),
/// through the program's `exec` and into a `posix_spawn` child (which would get the default,
/// the kernel's action being dprobe's handler).
#[test]
fn a_sigtrap_ignored_from_the_start_across_exec_and_into_a_spawned_child_stays_ignored_under_either_engine() {
    let program = program();
    for (ignoring, mode) in [(true, "ignored"), (false, "exec-ignored"), (false, "spawn-ignored")] {
        // (Under the ptrace engine, the trap of dprobe's own probe on `sigaction` sets an ignored
        // action to the default: it is put back before the call reads it.)
        for engine in ["agent", "ptrace"] {
            let got = started_with(engine, ignoring, program, &[mode]);
            assert_eq!(got, ("kept=1 traps=0\n".to_owned(), 1000), "{engine}, {mode}");
        }
    }
}

/// A program with a `SIGTRAP` handler raises one every millisecond while four threads that
/// block every signal call a probed function; dprobe attaches to it 15 times for 30 ms. It
/// says "ready" once each thread called the function.
const UNDER_LOAD: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static atomic_long traps;
static atomic_int started;
static volatile int stop;
static void on_trap(int s) { (void)s; traps++; }
__attribute__((noinline)) long step(long x) { __asm__ volatile("" ::: "memory"); return x + 1; }
static void *worker(void *a) {
    (void)a;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, 0);
    long x = step(0);
    started++;
    while (!stop) { x = step(x); usleep(100); }
    return 0;
}
int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_trap;
    sigaction(SIGTRAP, &sa, 0);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, 0);
    while (started < 4) usleep(100);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < 3000; i++) { raise(SIGTRAP); usleep(1000); }
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    struct sigaction now;
    sigaction(SIGTRAP, 0, &now);
    printf("traps %ld kept %d\n", (long)traps, now.sa_handler == on_trap);
    return 0;
}
"#;

/// Each trap in a thread that blocks `SIGTRAP` would set the action to the default, and the
/// program's own `SIGTRAP` could come before it is put back: the threads trap with it open.
#[test]
fn a_trap_handler_sees_every_trap_through_attaches_while_blocking_threads_hit_probes() {
    let program = c_program_from("trap-action-under-load", UNDER_LOAD, &["-O1", "-pthread"]);
    let mut running = Running(Command::new(program).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap());
    let child = &mut running.0;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id().to_string();
    let spec = format!("{program}:step");
    for round in 0..15 {
        let o = dprobe_command()
            .args(["trace", "--engine", "ptrace", "--count", "-d", "30ms", "-o", "/dev/null", "-p", &pid])
            .arg(&spec)
            .output()
            .unwrap();
        if o.status.code() != Some(0) {
            // The program ended (it may have been killed): what it says below tells.
            assert!(round > 0, "{}", String::from_utf8_lossy(&o.stderr));
            break;
        }
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((rest.as_str(), status.code()), ("traps 3000 kept 1\n", Some(0)), "{status:?}");
}

/// The same program started under dprobe: its threads block `SIGTRAP` after they start, so
/// each one's first trap sets the action to the default, and the program's next `SIGTRAP`
/// finds it put back (the action stays noted through the threads' creation). The program
/// raises its first once each thread trapped: a first trap in the moment between the action
/// put back and the delivery of the program's own would kill it (`trap_mask.rs`, not
/// covered).
#[test]
fn a_trap_handler_sees_every_trap_of_a_started_program_whose_threads_block_it_later() {
    let program = c_program_from("trap-action-under-load", UNDER_LOAD, &["-O1", "-pthread"]);
    assert_eq!(started_program(program, &[]).0, "ready\ntraps 3000 kept 1\n");
}
