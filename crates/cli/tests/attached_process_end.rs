//! A process dprobe attached to (`-p`) and did not start ends by a signal while traced: the
//! summary says how, and dprobe's exit status is the program's, with either engine. The agent
//! is neither the program's parent nor its tracer: dprobe reads how from the zombie's `/proc`
//! entry while the parent has not reaped it, and after (Linux 6.15) from a pidfd opened before
//! it attached.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use common::{dprobe_command, out_file, Running};

fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ends_by_a_signal_when_told.c");
    dprobe_test_fixtures::c_program(src, "ends_by_a_signal_when_told", &["-O2"])
}

/// Whether the kernel records a reaped process's end for its pidfds (Linux 6.15).
fn kernel_records_ends() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap()) >= (6, 15)
}

/// Trace the program (its pid `pid`, told to end through `told`) with `engine` until it ends:
/// (dprobe's exit status, its summary).
fn traced_to_its_end(engine: &str, what: &str, pid: &str, told: ChildStdin) -> (Option<i32>, String) {
    let out = out_file(&format!("attached-end-{what}-{engine}"));
    let mut dprobe = dprobe_command()
        .args(["trace", "-v", "-c", "--engine", engine, "-o", out.to_str().unwrap(), "-p", pid, "libc:getpid"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(dprobe.stderr.take().unwrap()).lines();
    assert!(lines.map(Result::unwrap).any(|l| l == "dprobe: tracing"), "{what}, {engine}: never traced");
    let mut told = told;
    told.write_all(b"go\n").unwrap();
    let status = dprobe.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let hits = text.lines().any(|l| l.split_whitespace().take(2).eq(["libc:getpid", "11"]));
    assert!(hits, "{what}, {engine}: its 11 calls\n{text}");
    (status.code(), text)
}

/// Its first line: "ready PID".
fn ready(printed: &mut BufReader<ChildStdout>) -> String {
    let mut ready = String::new();
    printed.read_line(&mut ready).unwrap();
    ready.strip_prefix("ready ").unwrap_or_else(|| panic!("{ready}")).trim().to_owned()
}

#[test]
fn an_attached_process_killed_by_a_signal_is_said_to_be_even_before_its_parent_reaps_it() {
    for engine in ["agent", "ptrace"] {
        // This test is the parent, and reaps it only once dprobe has ended.
        let child = Command::new(program()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut child = Running(child);
        let pid = ready(&mut BufReader::new(child.0.stdout.take().unwrap()));
        let (status, text) = traced_to_its_end(engine, "zombie", &pid, child.0.stdin.take().unwrap());
        let ending = format!("process {pid} was killed by SIGTERM after ");
        assert!(text.contains(&ending), "{engine}: {ending}\n{text}");
        assert_eq!(status, Some(128 + libc::SIGTERM), "{engine}\n{text}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.0.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}

#[test]
fn an_attached_process_killed_by_a_signal_and_reaped_at_once_is_said_to_be_where_the_kernel_keeps_it() {
    let recorded = kernel_records_ends();
    for engine in ["agent", "ptrace"] {
        // Its parent, a shell, reaps it as soon as it ends, and prints what it got.
        let script = format!("'{}'; echo \"status $?\"", program());
        let shell = Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
        let mut shell = Running(shell.unwrap());
        let mut printed = BufReader::new(shell.0.stdout.take().unwrap());
        let pid = ready(&mut printed);
        let (status, text) = traced_to_its_end(engine, "reaped", &pid, shell.0.stdin.take().unwrap());
        let mut said = String::new();
        printed.read_line(&mut said).unwrap();
        assert_eq!(said, "status 143\n", "{engine}: the shell's word for it");
        let killed = text.contains(&format!("process {pid} was killed by SIGTERM after "));
        if recorded || engine == "ptrace" || killed {
            assert!(killed, "{engine}: killed by SIGTERM\n{text}");
            assert_eq!(status, Some(128 + libc::SIGTERM), "{engine}\n{text}");
        } else {
            // Reaped before dprobe looked, with no record of it: only its parent knows.
            assert!(text.contains("only its parent can tell"), "{engine}\n{text}");
            assert_eq!(status, Some(0), "{engine}\n{text}");
        }
    }
}
