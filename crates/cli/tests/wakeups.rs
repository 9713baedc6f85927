//! `dprobe trace -p PID -d ...` again and again on a program whose threads wait in `pause`,
//! `nanosleep`, `read` and `sigsuspend`, each woken by signals sent only while it sleeps in its
//! call (and the moment it is no longer traced): every signal still ends exactly one call, as
//! untraced, and each dprobe ends with the program running untraced. The ptrace engine lets a
//! thread waiting in a call go without waking it (`dprobe-ptrace`'s `wakeups` test aims at the
//! moment that costs a wakeup; this one checks the path dprobe itself takes, to its exit).
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use common::{dprobe_command, out_file};

/// Threads waiting in each call, each with its signaller.
const PAIRS: u32 = 2;
/// dprobe's traces of the program.
const TRACES: u32 = 6;

fn wakeups() -> &'static str {
    dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../ptrace/tests/fixtures/wakeups.c"),
        "wakeups",
        &["-O2", "-pthread"],
    )
}

/// The program, killed if the test fails before it ends; its figures are read as they come.
struct Program {
    child: Child,
    figures: Option<std::thread::JoinHandle<String>>,
    done: Arc<AtomicBool>,
}

impl Program {
    fn start() -> Program {
        let mut child = Command::new(wakeups())
            .args(["0".to_string(), PAIRS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let done = Arc::new(AtomicBool::new(false));
        let said = done.clone();
        let figures = std::thread::spawn(move || {
            let mut figures = String::new();
            for line in out.lines().map_while(Result::ok) {
                if line == "done" {
                    break;
                }
                figures += &line;
                figures.push('\n');
            }
            said.store(true, SeqCst);
            figures
        });
        Program { child, figures: Some(figures), done }
    }

    /// Its figures (its signallers stop at the end of its input) and exit code.
    fn finish(mut self) -> (String, Option<i32>) {
        drop(self.child.stdin.take());
        let figures = self.figures.take().unwrap().join().unwrap();
        (figures, self.child.wait().unwrap().code())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Whether the figures say that every signal ended one call, each call's signals counted.
fn every_signal_ended_one_call(figures: &str) -> bool {
    let calls: Vec<&str> = figures.lines().map(|l| l.split(' ').next().unwrap_or("")).collect();
    calls == ["pause", "nanosleep", "read", "sigsuspend"]
        && figures.lines().all(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            matches!(words[..], [_, "sent", s, "handled", h, "returned", r, "lost", "0"]
                if s == h && h == r && s.parse::<u64>().is_ok_and(|s| s > 0))
        })
}

#[test]
fn attached_by_dprobe_again_and_again_every_signal_still_ends_one_call() {
    let program = Program::start();
    let pid = program.child.id().to_string();
    let out = out_file("wakeups-trace");
    for trace in 0..TRACES {
        let status = dprobe_command()
            .args(["trace", "--engine", "ptrace", "-d", "20ms", "-o", out.to_str().unwrap(), "-p", &pid])
            .arg("libc:getppid")
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "trace {trace}: {status}");
    }
    assert!(!program.done.load(SeqCst), "it still runs");
    let (figures, code) = program.finish();
    assert!(every_signal_ended_one_call(&figures) && code == Some(0), "{figures}{code:?}");
}
