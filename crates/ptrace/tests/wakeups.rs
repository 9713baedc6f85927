//! Letting a program go never costs it a wakeup: threads asleep in `pause`, `nanosleep`,
//! `read` and `sigsuspend`, each woken by a signal its signaller sends only while it sleeps
//! in its call, are attached and let go again and again. Every signal must end exactly one
//! call, as it does untraced. A thread that is let go by waking it goes back into its call
//! through a moment where a signal runs its handler first and the call then sleeps on.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dprobe_ptrace::{ProbeDef, Tracee};

fn wakeups() -> &'static str {
    dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wakeups.c"),
        "wakeups",
        &["-O2", "-pthread"],
    )
}

/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(300);

/// Signals each signaller sends.
const SIGNALS: u32 = 20_000;
/// Threads waiting in each call, each with its signaller.
const PAIRS: u32 = 4;

/// The program, killed if the test fails before it ends. Its figures are read as they come.
struct Program {
    child: Child,
    figures: std::thread::JoinHandle<String>,
    done: Arc<AtomicBool>,
}

impl Program {
    fn start() -> Program {
        let mut child = Command::new(wakeups())
            .args([SIGNALS.to_string(), PAIRS.to_string()])
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
        Program { child, figures, done }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it has printed its figures (it waits for the end of its input then).
    fn done(&self) -> bool {
        self.done.load(SeqCst)
    }

    /// Its figures and exit code, its input closed.
    fn finish(mut self) -> (String, Option<i32>) {
        drop(self.child.stdin.take());
        let figures = std::mem::replace(&mut self.figures, std::thread::spawn(String::new));
        let figures = figures.join().unwrap();
        (figures, self.child.wait().unwrap().code())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// What the program prints when every signal ended one call.
fn untraced_figures() -> String {
    let n = PAIRS * (SIGNALS + 1);
    ["pause", "nanosleep", "read", "sigsuspend"]
        .iter()
        .map(|call| format!("{call} sent {n} handled {n} returned {n} lost 0\n"))
        .collect()
}

#[test]
fn untraced_every_signal_ends_one_call() {
    let program = Program::start();
    assert_eq!(program.finish(), (untraced_figures(), Some(0)));
}

/// Attach, with a probe on a function none of the threads calls every `probe`th time (so that
/// the out-of-line page and its removal are there too), and let go, all on a thread of its own
/// that ends: the tracing of threads put back into their calls ends with it. Whether it could
/// attach (not while the last round's thread is still ending, which the kernel sees as
/// another tracer).
fn one_attach(pid: i32, probe: bool) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            let Ok(mut t) = Tracee::attach(pid) else { return false };
            if probe {
                t.add(ProbeDef::entry("libc:getppid", Box::new(|_| {}))).unwrap();
                let _ = t.run_for(Duration::from_micros(200));
            }
            t.let_go_as_thread_ends(&|| false).unwrap();
            true
        })
        .join()
        .unwrap()
    })
}

#[test]
fn attached_and_let_go_again_and_again_every_signal_still_ends_one_call() {
    let mut program = Program::start();
    let pid = program.pid();
    let (mut rounds, mut attaches) = (0, 0);
    let deadline = Instant::now() + DEADLOCK;
    while !program.done() {
        if Instant::now() > deadline {
            // A program that waits for ever fails on its figures.
            let _ = program.child.kill();
            break;
        }
        attaches += u32::from(one_attach(pid, rounds % 16 == 0));
        rounds += 1;
    }
    assert!(attaches > 0, "never attached in {rounds} tries");
    assert_eq!(program.finish(), (untraced_figures(), Some(0)), "after {attaches} attaches");
}
