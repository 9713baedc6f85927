//! The `wakeups` program (`crates/ptrace/tests/fixtures/wakeups.c`), driven as the ptrace and
//! command-line tests trace it: threads asleep in `pause`, `nanosleep`, `read` and
//! `sigsuspend`, each woken by signals its signaller sends only while it sleeps in its call.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The calls the program's threads wait in, in the order its figures name them.
pub const CALLS: [&str; 4] = ["pause", "nanosleep", "read", "sigsuspend"];

/// The program, killed if the test fails before it ends; its figures are read as they come.
pub struct Wakeups {
    child: Child,
    figures: Option<JoinHandle<String>>,
    done: Arc<AtomicBool>,
}

impl Wakeups {
    /// The program started with `pairs` threads waiting in each call, each with a signaller
    /// sending `signals` signals (0: until the end of its input), once it says it is ready.
    pub fn start(signals: u32, pairs: u32) -> Wakeups {
        let program = crate::programs::wakeups();
        let mut child = Command::new(program)
            .args([signals.to_string(), pairs.to_string()])
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
            for line in out.lines() {
                let line = line.unwrap();
                if line == "done" {
                    break;
                }
                figures += &line;
                figures.push('\n');
            }
            said.store(true, SeqCst);
            figures
        });
        Wakeups { child, figures: Some(figures), done }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has printed its figures (it waits for the end of its input then).
    pub fn done(&self) -> bool {
        self.done.load(SeqCst)
    }

    /// Kill it (a program that would wait for ever then fails on its figures).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Its figures and exit code, its input closed (its signallers stop at the end of it).
    pub fn finish(mut self) -> (String, Option<i32>) {
        drop(self.child.stdin.take());
        let figures = self.figures.take().unwrap().join().unwrap();
        (figures, self.child.wait().unwrap().code())
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
