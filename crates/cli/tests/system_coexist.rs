//! dprobe's breakpoint and another tool's kernel uprobe on the same function: while the
//! uprobe is registered the kernel takes the hits (dprobe's `int3` is the one it found there);
//! once it is removed (which writes the original instruction back) dprobe puts its breakpoint
//! back and says so. No hit is counted twice, none is lost unsaid.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{function_addr, out_file, read_mem, started_command};

const TRACING: &str = "/sys/kernel/tracing";
const GROUP: &str = "coexisting_tool";

/// `phases N` (see fixtures/phases.c).
fn phases() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/phases.c");
    dprobe_test_fixtures::c_program(src, "phases", &["-O2"])
}

fn define(line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(format!("{TRACING}/uprobe_events")).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
}

/// Another tool's uprobe, removed when dropped (a failed test leaves nothing behind).
struct OtherTool;

impl OtherTool {
    fn add(offset: u64) -> OtherTool {
        define(&format!("p:{GROUP}/counted {}:{offset:#x}", phases()));
        enable(true);
        OtherTool
    }
}

impl Drop for OtherTool {
    fn drop(&mut self) {
        enable(false);
        define(&format!("-:{GROUP}/counted"));
    }
}

fn enable(on: bool) {
    std::fs::write(format!("{TRACING}/events/{GROUP}/counted/enable"), if on { "1" } else { "0" }).unwrap();
}

/// The kernel's hit count of the uprobe, from `uprobe_profile`.
fn kernel_hits() -> u64 {
    let profile = std::fs::read_to_string(format!("{TRACING}/uprobe_profile")).unwrap();
    // `  PATH EVENT HITS`
    let line = profile
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([phases(), "counted"]))
        .unwrap_or_else(|| panic!("the uprobe is listed:\n{profile}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// The offset in its file of address `addr` of process `pid`.
fn file_offset(pid: i32, addr: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = f[0].split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        if (start..end).contains(&addr) {
            return addr - start + u64::from_str_radix(f[2], 16).unwrap();
        }
    }
    panic!("{addr:#x} is not mapped in {pid}");
}

/// Wait until `done`; the deadline only keeps a broken run from hanging.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_a_probed_function() {
    const N: u64 = 2000;
    let out = out_file("coexist");
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        // The ptrace engine's breakpoint. The agent's jump-optimized probe does not come
        // through the other tool's uprobe being added and removed yet: the program fails.
        .args(["trace", "--engine", "ptrace", "--count", "-o", out.to_str().unwrap(), "counted", "--", phases()])
        .arg(N.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = dprobe.stdin.take().unwrap();
    let mut output = BufReader::new(dprobe.stdout.take().unwrap());
    let mut phase = |k: u32| {
        input.write_all(b"go\n").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("phase {k} done {}", N * (N + 1) / 2), "the program's own sums");
    };
    wait_until("the command", || started_command(dprobe.id()).is_some());
    let pid = started_command(dprobe.id()).unwrap();
    // Phase 1: dprobe alone (its probes are placed before the command runs a line of its own).
    phase(1);
    // Phase 2: another tool's uprobe on the same instruction.
    let at = function_addr(pid, "counted");
    let offset = file_offset(pid, at);
    let other = OtherTool::add(offset);
    phase(2);
    let kernel = kernel_hits();
    // Phase 3: the uprobe removed, which writes the original instruction over dprobe's
    // breakpoint; dprobe's is put back.
    drop(other);
    wait_until("dprobe's breakpoint back", || read_mem(pid, at, 1) == [0xcc]);
    phase(3);
    drop(input);
    let status = dprobe.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(kernel, N, "the kernel took the hits while its uprobe was there\n{text}");
    assert_eq!(common::hits(&text, "counted"), 2 * N, "dprobe's: phases 1 and 3\n{text}");
    assert!(text.contains("counted: its breakpoint was removed by something else 1 time(s)"), "{text}");
}
