//! Ctrl-C at any moment of `dprobe trace -p`'s startup: whether it comes before dprobe has
//! caught the stop signals (it then ends as any program does, by the signal, having changed
//! nothing), while it attaches, or while it places its probes, dprobe ends, and the program
//! goes on with its code, its pages and its results as if it had never been traced.
//!
//! No moment is timed: the signal is sent at 100 points spread over the startup (every 2 ms
//! from the start), and every one of them must end the same way.
mod common;
#[path = "common/ending.rs"]
mod ending;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dprobe_command, function_addr, read_mem, target};
use ending::{wait_while_it_moves, Running};

/// `SIGINT` to a `dprobe trace ENGINE_ARGS -p PID` at 100 moments of its startup. `same_maps`:
/// whether the program's mappings are as before too (the agent's library stays loaded).
fn interrupt_startup_many_times(engine_args: &[&str], same_maps: bool) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    // The program runs: its four workers are started.
    while std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let functions = ["probed", "pair", "until_told"];
    let addrs: Vec<u64> = functions.iter().map(|f| function_addr(pid, f)).collect();
    let code = || -> Vec<Vec<u8>> { addrs.iter().map(|&a| read_mem(pid, a, 32)).collect() };
    let code_before = code();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let p = pid.to_string();
    let (mut caught, mut early) = (0, 0);
    for i in 0..100u64 {
        let mut dprobe = dprobe_command()
            .arg("trace")
            .args(engine_args)
            .args(["-o", "/dev/null", "-p", &p, "pair", "pair%return", "until_told%return"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2 * i));
        // SAFETY: signals the dprobe we started (still our unreaped child).
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
        let status = wait_while_it_moves(&mut dprobe, Some(pid), &format!("try {i}"));
        let stderr = std::io::read_to_string(dprobe.stderr.take().unwrap()).unwrap();
        match (status.code(), status.signal()) {
            // Caught: the trace ended and dprobe detached.
            (Some(0), None) => caught += 1,
            // Before dprobe caught the stop signals: it had changed nothing.
            (None, Some(libc::SIGINT)) => early += 1,
            other => panic!("try {i}: dprobe ended with {other:?}: {stderr}"),
        }
        assert!(!stderr.contains("panicked"), "try {i}: {stderr}");
        // The program is alive, running (not left stopped), and unchanged.
        assert!(child.0.try_wait().unwrap().is_none(), "try {i}: the program died: {stderr}");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = state.rsplit_once(") ").unwrap().1.chars().next().unwrap();
        assert!(matches!(state, 'R' | 'S'), "try {i}: the program is in state {state}");
        assert_eq!(code(), code_before, "try {i}: the original code, byte for byte");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if same_maps {
            assert_eq!(maps, maps_before, "try {i}: no page of dprobe's left behind");
        }
    }
    eprintln!("{caught} caught, {early} before dprobe caught the stop signals");
    assert!(caught > 0, "no SIGINT came after dprobe caught the stop signals ({early} came before)");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn sigint_at_any_moment_of_a_ptrace_attach_leaves_the_program_as_it_was() {
    interrupt_startup_many_times(&["--engine", "ptrace"], true);
}

#[test]
fn sigint_at_any_moment_of_an_agent_attach_leaves_the_program_as_it_was() {
    interrupt_startup_many_times(&["--engine", "agent"], false);
}

#[test]
fn sigint_while_a_fifo_waits_for_its_reader_ends_dprobe_before_anything_starts() {
    let fifo = common::out_file("startup.fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut dprobe = dprobe_command()
        .args(["trace", "-o", fifo.to_str().unwrap(), "probed", "--", target(), "until-usr2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // dprobe caught the stop signals (its signal thread runs) and waits for the FIFO's reader,
    // which never comes.
    let pid = dprobe.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let signal_thread = || {
        let Some(holder) = common::holder(pid) else { return false };
        let tasks = std::fs::read_dir(format!("/proc/{holder}/task")).into_iter().flatten().flatten();
        tasks
            .into_iter()
            .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "dprobe-signals"))
    };
    while !signal_thread() {
        assert!(Instant::now() < deadline, "dprobe never caught the stop signals");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signals the dprobe we started (still our unreaped child).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let status = wait_while_it_moves(&mut dprobe, None, "FIFO");
    let stderr = std::io::read_to_string(dprobe.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT before tracing started"), "{stderr}");
}

/// `dprobe ARGS` started with SIGINT ignored, as a shell without job control starts a
/// background job.
fn dprobe_with_sigint_ignored(args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_dprobe"));
    c.args(args);
    // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    c
}

#[test]
fn sigint_ignored_from_the_start_stays_ignored_and_sigterm_still_ends_the_trace() {
    let mut child = Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    let out = common::out_file("sigint-ignored");
    let mut dprobe =
        dprobe_with_sigint_ignored(&["trace", "-o", out.to_str().unwrap(), "-p", &pid.to_string(), "pair"])
            .spawn()
            .unwrap();
    // Tracing: events came (dprobe would have caught SIGINT by now, had it meant to).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains(" call pair(") {
        assert!(Instant::now() < deadline, "no event came");
        assert!(dprobe.try_wait().unwrap().is_none(), "dprobe ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = || std::fs::read_to_string(&out).unwrap_or_default().matches(" call pair(").count();
    // SAFETY: signals the dprobe we started (still our unreaped child).
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
    // A caught SIGINT would end the trace at the next event; the trace goes on.
    let at_sigint = events();
    while events() < at_sigint + 1000 {
        assert!(dprobe.try_wait().unwrap().is_none(), "dprobe ended on SIGINT");
        assert!(Instant::now() < deadline, "no event came after the SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_while_it_moves(&mut dprobe, Some(pid), "SIGTERM");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("detached from process {pid}")) && text.contains("(SIGTERM)"), "{text}");
    assert!(!text.contains("SIGINT"), "{text}");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn a_command_started_with_sigint_ignored_has_it_ignored_as_untraced() {
    // The signals `grep` ignores, as it reads them itself: untraced and traced, each started
    // with SIGINT ignored.
    let status_line = ["SigIgn", "/proc/self/status"];
    let untraced = {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("grep");
        // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
        unsafe {
            c.args(status_line).pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        c.output().unwrap()
    };
    let untraced = String::from_utf8(untraced.stdout).unwrap();
    let mask = u64::from_str_radix(untraced.trim().strip_prefix("SigIgn:").unwrap().trim(), 16).unwrap();
    assert_ne!(mask & (1 << (libc::SIGINT - 1)), 0, "{untraced}");
    let out = common::out_file("sigint-ignored-command");
    let traced = dprobe_with_sigint_ignored(&["trace", "--count", "-o", out.to_str().unwrap(), "libc:read", "--"])
        .arg("grep")
        .args(status_line)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&out).unwrap();
    assert_eq!(traced.status.code(), Some(0), "{summary}");
    assert!(common::hits(&summary, "libc:read") > 0, "traced: {summary}");
    assert_eq!(String::from_utf8(traced.stdout).unwrap(), untraced);
}

/// Works for about a third of a second, then says so: it ran to its end.
const WORKS_THEN_ENDS: &str = r#"
#include <stdio.h>
#include <time.h>
__attribute__((noinline)) int work(int x) { volatile int y = x; y += 1; return y; }
int main(void) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long n = 0;
    do {
        for (int i = 0; i < 1000; i++) n += work(i) - i;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000000000L + now.tv_nsec - start.tv_nsec < 300000000L);
    printf("ran to its end (%ld calls)\n", n);
    return 0;
}
"#;

/// A Ctrl-C to the process group (`kill -INT -PGID`: dprobe and the command it starts, once it
/// is forked) as dprobe starts the command: the command ends by it, or is not started, as
/// untraced it would have ended by it. One that came before the command's `fork` ran dprobe's
/// handler in the child (or came before the child), and the command, never told, ran to its
/// end, traced a moment and then untraced: 4 of 24 tries at moments of the first 5 ms, under
/// the ptrace engine. The moments are spread over dprobe's first 8 ms (none is timed: each
/// must end the same way).
#[test]
fn a_ctrl_c_to_the_process_group_as_the_command_starts_is_never_lost() {
    use std::os::unix::process::CommandExt;
    let program = common::c_program_from("works-then-ends", WORKS_THEN_ENDS, &["-O1"]);
    let mut caught = 0;
    for engine in ["ptrace", "agent"] {
        for i in 0..20u64 {
            let mut c = dprobe_command();
            c.args(["trace", "--engine", engine, "-c", "work", "--", program])
                .process_group(0)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let dprobe = c.spawn().unwrap();
            std::thread::sleep(Duration::from_micros(i * 400));
            // SAFETY: signals the process group of our own child, which leads it.
            assert_eq!(unsafe { libc::kill(-(dprobe.id() as i32), libc::SIGINT) }, 0);
            let o = dprobe.wait_with_output().unwrap();
            let (out, said) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(!out.contains("ran to its end"), "{engine}, try {i}: {said}");
            assert!(!said.contains("panicked"), "{engine}, try {i}: {said}");
            // Ended by the signal before it caught it; stopped before tracing (130); or
            // detached once tracing, the command ending by the signal after.
            use std::os::unix::process::ExitStatusExt;
            let status = (o.status.code(), o.status.signal());
            assert!(
                matches!(status, (None, Some(libc::SIGINT)) | (Some(130 | 0), _)),
                "{engine}, try {i}: {status:?} {said}"
            );
            caught += usize::from(status.0.is_some());
        }
    }
    // Some came once dprobe had caught the stop signals (the moments reach past its start).
    assert!(caught > 0, "every signal came before dprobe caught it");
}
