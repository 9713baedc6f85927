//! Stopping dprobe with a signal while it traces a command it started: a `SIGINT` sent to
//! dprobe alone (not the terminal's Ctrl-C, which the command receives too) detaches and ends
//! dprobe at once; the command goes on, untraced, to its own end. One sent to the whole process
//! group ends dprobe as it ends the command, and a `SIGTERM` reaches the command once, however
//! it was sent.
mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{dprobe_command, holder, out_file, started_command, target};

/// The first byte of `probed` in process `pid`, once it runs the target program.
fn first_byte_of_probed(pid: i32) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let maps = dprobe_sym::read_maps_of(pid as u32).ok()?;
    let at = dprobe_sym::Symbols::load(&maps).find("probed")?.start.0;
    let mut b = [0u8];
    std::fs::File::open(format!("/proc/{pid}/mem")).ok()?.read_exact_at(&mut b, at).ok()?;
    Some(b[0])
}

/// The first byte of `probed` as the target program has it, untraced.
fn untraced_first_byte() -> u8 {
    let mut child = std::process::Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let byte = loop {
        if let Some(b) = first_byte_of_probed(pid) {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "the untraced program never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    byte
}

#[test]
fn sigint_to_dprobe_alone_detaches_and_exits_without_waiting_for_the_command() {
    use std::io::BufRead;
    let original = untraced_first_byte();
    for engine in ["ptrace", "agent"] {
        let out = out_file(&format!("{engine}-sigint-alone"));
        let mut dprobe = dprobe_command()
            .args(["trace", "-v", "--engine", engine, "--count", "-o", out.to_str().unwrap()])
            .args(["probed", "pair%return", "--", target(), "until-usr2"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Traced once dprobe says so (its probes are live). Its standard error is read on, for
        // whatever it says after (the command, which shares it, keeps it open to its end).
        let (said, lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(dprobe.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = said.send(line);
            }
        });
        let mut told = String::new();
        loop {
            let line = lines.recv_timeout(Duration::from_secs(60)).expect("dprobe never said it traces");
            told.push_str(&line);
            told.push('\n');
            if line == "dprobe: tracing" {
                break;
            }
        }
        let command = started_command(dprobe.id()).expect("the command runs");
        let placed = first_byte_of_probed(command);
        assert!(placed.is_some_and(|b| b != original), "{engine}: `probed` is probed\n{told}");
        // SAFETY: signals the dprobe we started.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
        // A dprobe that waited for the command would wait for ever: the command ends only at
        // SIGUSR2, sent below once dprobe is gone (or, if dprobe hangs, by the watchdog).
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            // SAFETY: ends the command the test started through dprobe, if it still runs.
            unsafe { libc::kill(command, libc::SIGUSR2) };
        });
        let status = dprobe.wait().unwrap();
        // SAFETY: probes whether the command still runs (signal 0 sends nothing).
        let running = unsafe { libc::kill(command, 0) } == 0;
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(running, "{engine}: dprobe ended before the command: {text}");
        assert_eq!(status.code(), Some(0), "{engine}: {text}");
        assert!(text.contains(&format!("detached from process {command}")) && text.contains("(SIGINT)"), "{text}");
        assert!(text.contains("goes on untraced"), "{engine}: {text}");
        // SAFETY: ends the command, which goes on untraced.
        assert_eq!(unsafe { libc::kill(command, libc::SIGUSR2) }, 0);
        drop(watchdog);
    }
}

/// `counts_terms`: prints "working" once its SIGTERM handler is in place, works until its first
/// SIGTERM, then 300 ms more, and prints "SIGTERM received N times"; SIGINT ends it. With `on`,
/// it works on past SIGTERMs, until SIGUSR1, and prints "term" at each.
fn counts_terms() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/counts_terms.c");
    dprobe_test_fixtures::c_program(src, "counts_terms", &["-O2"])
}

/// `dprobe trace -v --engine ENGINE --count probed -- counts_terms`, in a process group of its
/// own, once its probe is live and the command works: dprobe, the command, and the file of
/// dprobe's summary. The command's standard output is dprobe's, piped, its first line read.
fn trace_counts_terms(engine: &str, name: &str, args: &[&str]) -> (Child, i32, std::path::PathBuf) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let out = out_file(&format!("{engine}-{name}"));
    let mut dprobe = dprobe_command()
        .args(["trace", "-v", "--engine", engine, "--count", "-o", out.to_str().unwrap()])
        .args(["probed", "--", counts_terms()])
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(dprobe.stderr.take().unwrap());
    let mut told = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{engine}: dprobe never said it traces: {told}");
        told.push_str(&line);
        if line == "dprobe: tracing\n" {
            break;
        }
    }
    // What dprobe says next is read on, for it never to block on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let command = started_command(dprobe.id()).expect("the command runs");
    // A signal is sent once the command's handler is in place (dprobe traces from its start).
    let mut working = [0; 8];
    std::io::Read::read_exact(dprobe.stdout.as_mut().unwrap(), &mut working).unwrap();
    assert_eq!(&working, b"working\n", "{engine}");
    (dprobe, command, out)
}

/// Kills processes `pids` if it lives a minute (a dprobe that would wait for ever, and its
/// command), so that a test fails instead of hanging.
struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pids: [i32; 2]) -> Watchdog {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !seen.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !seen.load(Ordering::Relaxed) {
                for pid in pids {
                    // SAFETY: ends what the test started, still running after a minute.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        Watchdog { done, thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wait for `dprobe`'s end (killing it and the command after a minute): its status and its
/// summary.
fn ended(dprobe: &mut Child, command: i32, out: &std::path::Path) -> (std::process::ExitStatus, String) {
    let watchdog = Watchdog::start([command, dprobe.id() as i32]);
    let status = dprobe.wait().unwrap();
    drop(watchdog);
    (status, std::fs::read_to_string(out).unwrap())
}

/// What the command printed, once it has ended.
fn printed(dprobe: &mut Child) -> String {
    std::io::read_to_string(dprobe.stdout.take().unwrap()).unwrap()
}

/// Whether process `pid` still runs (not a zombie).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn a_sigint_to_the_process_group_ends_dprobe_as_it_ends_the_command() {
    for engine in ["ptrace", "agent"] {
        let (mut dprobe, command, out) = trace_counts_terms(engine, "group-sigint", &[]);
        // As `kill -INT -PGID`: the command gets it too, and dies by it, as untraced.
        // SAFETY: signals the process group of the dprobe we started.
        assert_eq!(unsafe { libc::killpg(dprobe.id() as i32, libc::SIGINT) }, 0);
        let (status, summary) = ended(&mut dprobe, command, &out);
        let printed = printed(&mut dprobe);
        assert!(printed.is_empty(), "{engine}: the command was killed before it printed: {printed}");
        // The command's end comes after dprobe's stop, or (seen first) before it.
        let detached = format!("detached from process {command} after");
        let killed = format!("process {command} was killed by SIGINT after");
        assert!(
            summary.contains(&detached) && summary.contains("(SIGINT); it then was killed by SIGINT")
                || summary.contains(&killed),
            "{engine}: {summary}"
        );
        assert_eq!(status.code(), Some(128 + libc::SIGINT), "{engine}: {summary}");
        assert!(!runs(command), "{engine}: the command runs on");
    }
}

#[test]
fn a_sigterm_to_the_process_group_reaches_the_command_once() {
    for engine in ["ptrace", "agent"] {
        let (mut dprobe, command, out) = trace_counts_terms(engine, "group-sigterm", &[]);
        // SAFETY: signals the process group of the dprobe we started.
        assert_eq!(unsafe { libc::killpg(dprobe.id() as i32, libc::SIGTERM) }, 0);
        let (status, summary) = ended(&mut dprobe, command, &out);
        assert_eq!(printed(&mut dprobe), "SIGTERM received 1 times\n", "{engine}: as untraced\n{summary}");
        assert!(summary.contains("(SIGTERM); it then exited with status 0"), "{engine}: {summary}");
        assert_eq!(status.code(), Some(0), "{engine}: {summary}");
    }
}

/// A stop signal sent to both of dprobe's processes by their pid (as `pkill dprobe` does),
/// which the command does not get.
fn to_dprobes_processes(dprobe: &Child, signal: i32) {
    let holder = holder(dprobe.id()).expect("dprobe's holder runs") as i32;
    for pid in [dprobe.id() as i32, holder] {
        // SAFETY: signals the dprobe we started, and its child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

#[test]
fn a_sigint_to_dprobes_processes_alone_lets_the_command_go_on() {
    for engine in ["ptrace", "agent"] {
        let (mut dprobe, command, out) = trace_counts_terms(engine, "named-sigint", &[]);
        to_dprobes_processes(&dprobe, libc::SIGINT);
        // dprobe ends without the command, which ends at the SIGTERM sent below.
        let (status, summary) = ended(&mut dprobe, command, &out);
        assert!(summary.contains("(SIGINT); it goes on untraced"), "{engine}: {summary}");
        assert_eq!(status.code(), Some(0), "{engine}: {summary}");
        assert!(runs(command), "{engine}: the command was ended");
        // SAFETY: ends the command, which goes on untraced.
        assert_eq!(unsafe { libc::kill(command, libc::SIGTERM) }, 0);
        assert_eq!(printed(&mut dprobe), "SIGTERM received 1 times\n", "{engine}: it ran on as untraced");
    }
}

#[test]
fn a_sigterm_to_dprobes_processes_alone_is_passed_on_once() {
    for engine in ["ptrace", "agent"] {
        let (mut dprobe, command, out) = trace_counts_terms(engine, "named-sigterm", &[]);
        to_dprobes_processes(&dprobe, libc::SIGTERM);
        let (status, summary) = ended(&mut dprobe, command, &out);
        assert_eq!(printed(&mut dprobe), "SIGTERM received 1 times\n", "{engine}: as untraced\n{summary}");
        assert!(summary.contains("(SIGTERM); it then exited with status 0"), "{engine}: {summary}");
        assert_eq!(status.code(), Some(0), "{engine}: {summary}");
    }
}

#[test]
fn a_second_stop_signal_ends_the_wait_for_a_command_that_outlives_the_first() {
    for engine in ["ptrace", "agent"] {
        let (mut dprobe, command, out) = trace_counts_terms(engine, "second-sigterm", &["on"]);
        // Passed on, the first does not end the command, and dprobe waits for it (it passes
        // it on once it has let the command go).
        // SAFETY: signals the dprobe we started.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) }, 0);
        let mut term = [0; 5];
        let watchdog = Watchdog::start([command, dprobe.id() as i32]);
        std::io::Read::read_exact(dprobe.stdout.as_mut().unwrap(), &mut term).unwrap();
        drop(watchdog);
        assert_eq!(&term, b"term\n", "{engine}");
        assert!(dprobe.try_wait().unwrap().is_none(), "{engine}: dprobe waits for the command");
        // The second ends the wait; the command ends when the test tells it, once dprobe has
        // (or after a minute, if dprobe waits on).
        // SAFETY: signals the dprobe we started.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGTERM) }, 0);
        let (status, summary) = ended(&mut dprobe, command, &out);
        assert!(runs(command), "{engine}: dprobe waited for the command's end: {summary}");
        assert!(summary.contains("(SIGTERM); it goes on untraced"), "{engine}: {summary}");
        assert_eq!(status.code(), Some(0), "{engine}: {summary}");
        // SAFETY: ends the command, which goes on untraced.
        assert_eq!(unsafe { libc::kill(command, libc::SIGUSR1) }, 0);
        assert_eq!(printed(&mut dprobe), "SIGTERM received 1 times\n", "{engine}: passed on once");
    }
}
