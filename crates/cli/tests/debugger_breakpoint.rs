//! A debugger's breakpoint put on a function while the agent's jump is there (gdb saves the
//! jump's `e9` as the original byte, and writes it back when the breakpoint goes). The trace
//! ends meanwhile: dprobe says the jump stays and why, and leaves it, into code that runs the
//! original instructions; the program runs on with its untraced results once the debugger
//! has gone, and a later trace probes the function as any other and gives the original code
//! back byte for byte. Before, the trace's end left the jump's other bytes and gave its detour
//! up: the debugger's `e9` then sent the program into code that was not there any more (a
//! later trace saw millions of hits, then the program spun for good).
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;

use common::{c_program_from, function_addr, hits, read_mem};
use killing::{start_dprobe_tracing, wait_until};

/// Prints `ready`, then for each line it reads calls `work` 1,000 times and prints the running
/// sum; ends at the end of its input.
const ROUNDS: &str = r#"
#include <stdio.h>
__attribute__((noinline)) long work(long x) { return x * 3 + 1; }
int main(void) {
    printf("ready\n");
    fflush(stdout);
    char line[64];
    long sum = 0;
    while (fgets(line, sizeof line, stdin)) {
        for (long i = 0; i < 1000; i++) sum += work(i);
        printf("sum=%ld\n", sum);
        fflush(stdout);
    }
    return 0;
}
"#;

/// Write `bytes` at `addr` in process `pid`, as a debugger does.
fn poke(pid: i32, addr: u64, bytes: &[u8]) {
    let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).unwrap();
    mem.write_all_at(bytes, addr).unwrap();
}

/// Ask dprobe `dprobe` to end and wait for it: its exit status. `SIGTERM`, not `SIGINT`: a
/// test run in the background (as CI runs them) ignores `SIGINT`, and dprobe with it.
fn interrupt(dprobe: u32) -> i32 {
    // SAFETY: signals to the dprobe this test started, then reaping it.
    unsafe {
        assert_eq!(libc::kill(dprobe as i32, libc::SIGTERM), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(dprobe as i32, &mut status, 0), dprobe as i32);
        status
    }
}

#[test]
fn a_jump_under_a_debugger_s_breakpoint_stays_a_pass_through_and_is_said() {
    let program = c_program_from("debugged", ROUNDS, &["-O1"]);
    let (mut child, mut output) = common::start_ready(program);
    let mut input = child.stdin.take().unwrap();
    let mut round = |n: i64| {
        writeln!(input, "go").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let one: i64 = (0..1000).map(|i| i * 3 + 1).sum();
        assert_eq!(line, format!("sum={}\n", one * n), "round {n}: the program's own result");
    };
    let (pid, dir) = (child.id() as i32, common::out_file("debugged-traces"));
    std::fs::create_dir_all(&dir).unwrap();
    let at = function_addr(pid, "work");
    let original = read_mem(pid, at, 8);
    let args = |n: &str| (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
    let trace = ["--engine", "agent", "--count", "-p", &pid.to_string(), "debugged:work"].map(str::to_owned);
    let trace: Vec<&str> = trace.iter().map(String::as_str).collect();

    // A trace, its probe a jump; then the debugger's breakpoint on its first byte.
    let (out, err) = args("first");
    let dprobe = start_dprobe_tracing(&trace, &out, &err);
    wait_until("the jump", || read_mem(pid, at, 1) == [0xe9]);
    round(1);
    let jump = read_mem(pid, at, 5);
    poke(pid, at, &[0xcc]);
    assert_eq!(interrupt(dprobe), 0, "{}", std::fs::read_to_string(&err).unwrap());
    let said = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    assert_eq!(hits(&said, "debugged:work"), 1000, "{said}");
    assert!(
        said.contains("debugged:work+0x0") && said.contains("a debugger's breakpoint"),
        "the jump left is said, and where:\n{said}"
    );
    assert_eq!(read_mem(pid, at, 5), [&[0xcc], &jump[1..]].concat(), "the debugger's byte, then the jump's");

    // The debugger goes: its saved byte back, the program runs through the detour.
    poke(pid, at, &[0xe9]);
    round(2);
    round(3);

    // A later trace: a probe as any other, the original code back after it.
    let (out, err) = args("second");
    let dprobe = start_dprobe_tracing(&trace, &out, &err);
    round(4);
    round(5);
    assert_eq!(interrupt(dprobe), 0, "{}", std::fs::read_to_string(&err).unwrap());
    let said = std::fs::read_to_string(&out).unwrap();
    assert_eq!(hits(&said, "debugged:work"), 2000, "{said}");
    assert_eq!(read_mem(pid, at, 8), original, "the original code back, byte for byte");
    round(6);
    drop(input);
    assert!(child.wait().unwrap().success());
}
