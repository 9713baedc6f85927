//! A program whose worker blocks every signal (as servers' workers do, to take signals with
//! `sigwait`) and calls a function whose probe stays on `int3` (too short for a jump): the
//! trap is a forced `SIGTRAP`, which kills a thread that blocks it.
//!
//! Started by each engine that traces one program, it finishes with its own result, every
//! call counted: the ptrace engine's tracer takes the trap first; the agent keeps `SIGTRAP`
//! out of the masks the program sets. A running program whose worker blocks it already is
//! traced by ptrace, and the agent asked for is refused before anything is placed. A signal
//! handler installed with every signal in its mask is the same case.
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
    for engine in ["agent", "ptrace"] {
        let t = common::trace_to_file(
            &format!("{engine}-blocked"),
            &["--engine", engine, "-c", "-v", &probe, "--", program()],
        );
        let what = t.what(engine);
        // (Every ptrace probe traps.)
        assert!(engine == "ptrace" || t.stderr.contains("on int3"), "the probe traps: {what}");
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "sum=500500\n"), "{what}");
        assert_eq!(common::hits(&t.trace, &probe), 1000, "{what}");
    }
}

/// Its worker blocks every signal at once and calls `tiny` until `SIGUSR2` comes (to the main
/// thread, which blocks nothing), then it prints whether every call returned its value.
const RUNNING: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int tiny(int x) { return x + 1; }
static volatile sig_atomic_t stop;
static long calls, bad;
static void on_usr2(int s) { (void)s; stop = 1; }
static void *worker(void *a) {
    (void)a;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, 0);
    while (!stop) {
        for (int i = 0; i < 1000; i++) {
            bad += tiny(i) != i + 1;
            calls++;
        }
        usleep(200);
    }
    return 0;
}
int main(void) {
    signal(SIGUSR2, on_usr2);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    pthread_join(t, 0);
    printf("called=%d bad=%ld\n", calls > 0, bad);
    return 0;
}
"#;

/// `dprobe trace -v OPTIONS tiny` into file `name` until 100 calls of `tiny` came, then
/// Ctrl-C: dprobe's messages (it exited 0).
fn trace_100_calls(options: &[&str], name: &str) -> String {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let out = out_file(name);
    let dprobe = common::dprobe_command()
        .args(["trace", "-v", "-o", out.to_str().unwrap()])
        .args(options)
        .arg("tiny")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&out).unwrap_or_default().lines().filter(|l| l.contains(" call tiny(")).count() < 100
    {
        assert!(Instant::now() < deadline, "no events came");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signals the dprobe we started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
    let traced = dprobe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&traced.stderr).into_owned();
    assert_eq!(traced.status.code(), Some(0), "{stderr}");
    stderr
}

/// The first thread of `pid` that blocks `SIGTRAP`.
fn blocking_thread(pid: u32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.filter_map(Result::ok).find_map(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        let blocked = u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?.trim(), 16).ok()?;
        // (Not a thread the C library is still starting: every signal, its own two among them.)
        let starting = blocked & (3 << 31) == 3 << 31;
        (blocked & (1 << (libc::SIGTRAP - 1)) != 0 && !starting)
            .then(|| task.file_name().to_string_lossy().into_owned())
    })
}

#[test]
fn a_running_program_whose_worker_blocks_every_signal_is_traced_by_ptrace() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let src = out_file("blocked_running.c");
    std::fs::write(&src, RUNNING).unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "blocked-running", &["-O2", "-pthread"]);
    let child = Command::new(program).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tid = loop {
        if let Some(tid) = blocking_thread(pid) {
            break tid;
        }
        assert!(Instant::now() < deadline, "the worker never blocked its signals");
        std::thread::sleep(Duration::from_millis(5));
    };
    let p = pid.to_string();

    // The agent, asked for: refused, with the thread and what to use instead.
    let o = common::dprobe(&["trace", "--engine", "agent", "-c", "-p", &p, "tiny"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("thread {tid} of process {pid} blocks SIGTRAP")) && stderr.contains("--engine ptrace"),
        "{stderr}"
    );

    // By default: ptrace, which says why with -v; events come, and Ctrl-C detaches.
    let stderr = trace_100_calls(&["-p", &p], "blocked-running-trace");
    assert!(stderr.contains("engine: ptrace") && stderr.contains("blocks SIGTRAP"), "{stderr}");

    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    let finished = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&finished.stdout), "called=1 bad=0\n");
    assert_eq!(finished.status.code(), Some(0));
}

/// A handler installed with every signal in its mask (`sigfillset(&sa.sa_mask)`) calls `tiny`
/// at each `SIGUSR1` the program raises: `N` times with an argument (it prints its calls),
/// else until `SIGUSR2` comes (it prints whether it was called, and whether its handler's
/// mask holds `SIGTRAP` again by then).
const HANDLER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) int tiny(int x) { return x + 1; }
static volatile sig_atomic_t stop;
static long calls, bad;
static void on_usr1(int s) { (void)s; bad += tiny(41) != 42; calls++; }
static void on_usr2(int s) { (void)s; stop = 1; }
int main(int argc, char **argv) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigfillset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGUSR2, on_usr2);
    if (argc > 1) {
        for (long i = 0; i < atol(argv[1]); i++)
            raise(SIGUSR1);
        printf("calls=%ld bad=%ld\n", calls, bad);
        return 0;
    }
    while (!stop) {
        raise(SIGUSR1);
        usleep(200);
    }
    struct sigaction now;
    sigaction(SIGUSR1, 0, &now);
    printf("called=%d bad=%ld trap_blocked=%d\n", calls > 0, bad, sigismember(&now.sa_mask, SIGTRAP));
    return 0;
}
"#;

/// Whether `pid` has a handler for `sig` (its `SigCgt` line).
fn catches(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(|v| u64::from_str_radix(v.trim(), 16));
    matches!(caught, Some(Ok(set)) if set & (1 << (sig - 1)) != 0)
}

#[test]
fn a_handler_that_blocks_every_signal_survives_its_int3_hits() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let src = out_file("blocked_handler.c");
    std::fs::write(&src, HANDLER).unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "blocked-handler", &["-O2"]);
    let probe = format!("{program}:tiny");

    // Started: the handler is installed while the session runs.
    for engine in ["agent", "ptrace"] {
        let t = common::trace_to_file(
            &format!("{engine}-blocked-handler"),
            &["--engine", engine, "-c", "-v", &probe, "--", program, "1000"],
        );
        let what = t.what(engine);
        assert!(engine == "ptrace" || t.stderr.contains("on int3"), "the probe traps: {what}");
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "calls=1000 bad=0\n"), "{what}");
        assert_eq!(common::hits(&t.trace, &probe), 1000, "{what}");
    }

    // Running: the handler was installed before the agent came, and its mask is the
    // program's again once the agent has gone.
    let child = Command::new(program).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(catches(pid, libc::SIGUSR1) && catches(pid, libc::SIGUSR2)) {
        assert!(Instant::now() < deadline, "the program never installed its handlers");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stderr = trace_100_calls(&["--engine", "agent", "-p", &pid.to_string()], "blocked-handler-trace");
    assert!(stderr.contains("engine: agent") && stderr.contains("on int3"), "{stderr}");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    let finished = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&finished.stdout), "called=1 bad=0 trap_blocked=1\n");
    assert_eq!(finished.status.code(), Some(0));
}

/// Four workers each block every signal around a `vfork` (as a shell does around each command
/// it runs) and call `tiny` in between, until `SIGUSR2` comes; then the program prints whether
/// every child ended as it should.
const VFORKS: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) int tiny(int x) { return x + 1; }
static volatile sig_atomic_t stop;
static void on_usr2(int s) { (void)s; stop = 1; }
static void *worker(void *a) {
    (void)a;
    long bad = 0, n = 0;
    sigset_t all, old;
    sigfillset(&all);
    while (!stop) {
        bad += tiny((int)n) != (int)n + 1;
        sigprocmask(SIG_SETMASK, &all, &old);
        pid_t pid = vfork();
        if (pid == 0)
            _exit(7);
        sigprocmask(SIG_SETMASK, &old, 0);
        int status = 0;
        bad += pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 7;
        n++;
    }
    return (void *)(bad + (n == 0));
}
int main(void) {
    signal(SIGUSR2, on_usr2);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], 0, worker, 0);
    long bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    printf("bad=%ld\n", bad);
    return 0;
}
"#;

/// The agent's end (Ctrl-C sent to dprobe alone) while threads block every signal around
/// `vfork`: the agent's probe on `vfork` is an `int3` for a moment as it goes, so `SIGTRAP`
/// stays out of the masks the program sets until it has gone. Each of several rounds ends
/// with the program untraced and running, then finishing with its own result.
#[test]
fn threads_that_block_every_signal_around_vfork_outlive_the_agent_s_end() {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let src = out_file("blocked_vforks.c");
    std::fs::write(&src, VFORKS).unwrap();
    let program = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "blocked-vforks", &["-O2", "-pthread"]);
    let probe = format!("{program}:tiny");
    for round in 0..6 {
        let out = out_file(&format!("blocked-vforks-{round}"));
        let mut dprobe = common::dprobe_command()
            .args(["trace", "--engine", "agent", "-o", out.to_str().unwrap(), &probe, "--", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::read_to_string(&out).unwrap_or_default().lines().filter(|l| l.contains(" call tiny(")).count()
            < 100
        {
            assert!(Instant::now() < deadline, "round {round}: no events came");
            std::thread::sleep(Duration::from_millis(5));
        }
        let command = common::started_command(dprobe.id()).expect("the program dprobe started");
        // SAFETY: signals the dprobe this test started.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
        // Untraced once dprobe's summary is written (dprobe ends; the program goes on); it
        // then runs on a while, and is stopped.
        while !std::fs::read_to_string(&out).unwrap_or_default().contains("PROBE") {
            assert!(Instant::now() < deadline, "round {round}: dprobe never detached");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: signals the program this test had dprobe start.
        unsafe { libc::kill(command, libc::SIGUSR2) };
        let status = dprobe.wait().unwrap();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        dprobe.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        dprobe.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let trace = std::fs::read_to_string(&out).unwrap_or_default();
        let summary = trace.lines().skip_while(|l| !l.starts_with("PROBE")).collect::<Vec<_>>().join("\n");
        let what = format!("round {round}: dprobe's status {status:?}\n{stderr}\n{summary}");
        assert_eq!(status.code(), Some(0), "{what}");
        // Read to its end: the program's own line, once it ended (none if it was killed).
        assert_eq!(stdout, "bad=0\n", "the program's result (nothing: killed), {what}");
    }
}
