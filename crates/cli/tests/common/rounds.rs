//! The `rounds` program driven one round at a time, and a `dprobe trace` left running beside
//! it until the test stops it: what the tests of exact shares and of dprobe's own calls share.
//! A test knows exactly which calls happened while dprobe traced: it runs rounds only once
//! dprobe said its probes are live (`-v`: "dprobe: tracing"), and each round is seen done
//! before the next starts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};

use super::{dprobe_command, out_file};

/// The `rounds` program (`rounds.c` says what one round calls).
pub fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rounds.c");
    dprobe_test_fixtures::c_program(src, "rounds", &["-O2"])
}

/// A running `rounds`, waiting for its next line.
pub struct Rounds {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    done: u64,
}

impl Rounds {
    pub fn start() -> Rounds {
        let mut child =
            Command::new(program()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("starting rounds");
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        Rounds { child, input, output: BufReader::new(output), done: 0 }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rounds run so far (the number of the last one).
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Run `n` more rounds, each seen done (its line read) before the next.
    pub fn run(&mut self, n: u64) {
        for _ in 0..n {
            writeln!(self.input, "go").unwrap();
            let mut line = String::new();
            self.output.read_line(&mut line).unwrap();
            self.done += 1;
            assert_eq!(line, format!("round {}\n", self.done), "the program's own account");
        }
    }

    /// End the program (the end of its input) and check it ended well.
    pub fn finish(self) {
        let Rounds { mut child, input, .. } = self;
        drop(input);
        assert!(child.wait().unwrap().success(), "rounds ended well");
    }
}

/// `dprobe trace -v -o FILE ARGS`, running, its probes live.
pub struct Tracing {
    child: Child,
    out: PathBuf,
    stderr: BufReader<ChildStderr>,
    said: String,
}

impl Tracing {
    /// Start dprobe and wait until it says it traces. FILE is a fresh file named `name`.
    pub fn start(name: &str, args: &[&str]) -> Tracing {
        let out = out_file(name);
        let _ = std::fs::remove_file(&out);
        let mut child = dprobe_command()
            .args(["trace", "-v", "-o", out.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dprobe");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.ends_with("dprobe: tracing\n") {
            assert!(stderr.read_line(&mut said).unwrap() > 0, "dprobe ended before tracing: {said}");
        }
        Tracing { child, out, stderr, said }
    }

    /// The pid of `dprobe` as started (the front; the holder is its child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C (SIGINT to dprobe alone) and wait: (exit code, what it wrote to FILE, what it
    /// said on its standard error).
    pub fn stop(self) -> (Option<i32>, String, String) {
        // SAFETY: a signal to the dprobe this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) }, 0);
        self.end()
    }

    /// Wait until dprobe ends by itself (the traced process ended): as [`Tracing::stop`].
    pub fn end(self) -> (Option<i32>, String, String) {
        let Tracing { mut child, out, mut stderr, mut said } = self;
        stderr.read_to_string(&mut said).unwrap();
        let code = child.wait().unwrap().code();
        assert!(!said.contains("panicked"), "no panic: {said}");
        (code, std::fs::read_to_string(&out).unwrap_or_default(), said)
    }
}

/// The pid in an event line (`process 'COMM' (PID) ...`).
pub fn event_pid(line: &str) -> Option<u32> {
    line.split_once("' (")?.1.split_once(')')?.0.parse().ok()
}
