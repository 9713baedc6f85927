//! A program whose threads block every signal with the system call itself, then call the C
//! library's `syscall` all the time, attached by the agent again and again: it runs on and
//! ends as untraced. The agent probes `syscall` in every program it is loaded into (a seccomp
//! filter installed through it makes the agent leave); a jump at its entry covers two
//! instructions and would go in over an `int3`, which kills a thread that blocks `SIGTRAP`.
//! The probe goes past the argument moves instead, where its jump goes in in one store.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{dprobe_command, libc_function_starts_with_endbr64, out_file, Running};

/// The program: prints "calls N wrong W" once its standard input ends.
fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/syscalls_with_every_signal_blocked.c");
    dprobe_test_fixtures::c_program(src, "syscalls_with_every_signal_blocked", &["-O2", "-pthread"])
}

/// dprobe's traces of the program.
const TRACES: u32 = 10;

#[test]
fn threads_calling_syscall_with_every_signal_blocked_live_through_the_agents_attaches() {
    // With `endbr64` first (a C library built for CET), the load of the sixth argument spans
    // two aligned words, and the agent's probe stays at the entry, over an `int3`.
    if libc_function_starts_with_endbr64(c"syscall") {
        return eprintln!("skipped: the C library's syscall starts with endbr64");
    }
    let child = Command::new(program()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut running = Running(child);
    let program = &mut running.0;
    let pid = program.id().to_string();
    let out = out_file("syscall-every-signal-blocked");
    let mut traced = 0;
    for trace in 0..TRACES {
        let o = dprobe_command()
            .args(["trace", "--engine", "agent", "-c", "-d", "50ms", "-o", out.to_str().unwrap()])
            .args(["-p", &pid, "libc:getpid"])
            .output()
            .unwrap();
        if let Some(ended) = program.try_wait().unwrap() {
            panic!("trace {trace}: the program ended: {ended}");
        }
        let stderr = String::from_utf8_lossy(&o.stderr);
        // dprobe looks at the threads' masks before it loads the agent: one found blocking
        // `SIGTRAP` then is a refusal, as it should be.
        if o.status.code() == Some(2) && stderr.contains("blocks SIGTRAP") {
            continue;
        }
        assert!(o.status.success(), "trace {trace}: {stderr}");
        let table = std::fs::read_to_string(&out).unwrap();
        let row = table.lines().find(|l| l.starts_with("libc:getpid ")).unwrap_or_else(|| panic!("{table}"));
        assert_ne!(row.split_whitespace().nth(1), Some("0"), "trace {trace}: {table}");
        traced += 1;
    }
    assert!(traced >= TRACES / 2, "only {traced} of {TRACES} traces were not refused");
    drop(program.stdin.take());
    let mut printed = String::new();
    program.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    let status = program.wait().unwrap();
    assert!(status.success(), "{status}: {printed}");
    assert!(printed.starts_with("calls ") && printed.ends_with(" wrong 0\n"), "{printed}");
}
