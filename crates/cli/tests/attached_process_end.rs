//! A process dprobe attached to (`-p`) and did not start ends by a signal while traced: the
//! summary says how, and dprobe's exit status is the program's, with either engine. The agent
//! is neither the program's parent nor its tracer: dprobe reads it from a pidfd opened before
//! it attached (the kernel's record once the parent has reaped it) or from the zombie's
//! `/proc` entry before.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{dprobe_command, out_file};

fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ends_by_a_signal_when_told.c");
    dprobe_test_fixtures::c_program(src, "ends_by_a_signal_when_told", &["-O2"])
}

/// The shell running the program, killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_attached_process_killed_by_a_signal_is_said_to_be_with_its_status() {
    for engine in ["agent", "ptrace"] {
        // Its parent, a shell, reaps it as soon as it ends, and prints what it got.
        let script = format!("'{}'; echo \"status $?\"", program());
        let shell = Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
        let mut shell = Running(shell.unwrap());
        let mut printed = BufReader::new(shell.0.stdout.take().unwrap());
        let mut ready = String::new();
        printed.read_line(&mut ready).unwrap();
        let pid = ready.strip_prefix("ready ").unwrap_or_else(|| panic!("{ready}")).trim().to_owned();
        let out = out_file(&format!("attached-end-{engine}"));
        let mut dprobe = dprobe_command()
            .args(["trace", "-v", "-c", "--engine", engine, "-o", out.to_str().unwrap(), "-p", &pid, "libc:getpid"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut told = String::new();
        for line in BufReader::new(dprobe.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            told.push_str(&line);
            told.push('\n');
            if line == "dprobe: tracing" {
                break;
            }
        }
        shell.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = dprobe.wait().unwrap();
        let mut said = String::new();
        printed.read_line(&mut said).unwrap();
        assert_eq!(said, "status 143\n", "{engine}: the shell's word for it");
        let text = std::fs::read_to_string(&out).unwrap();
        let ending = format!("process {pid} was killed by SIGTERM after ");
        assert!(text.contains(&ending), "{engine}: {ending}\n{told}{text}");
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{engine}\n{told}{text}");
        let hits = text.lines().any(|l| l.split_whitespace().take(2).eq(["libc:getpid", "11"]));
        assert!(hits, "{engine}: its 11 calls\n{text}");
    }
}
