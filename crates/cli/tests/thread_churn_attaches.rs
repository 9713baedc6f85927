//! A program that starts and ends threads all the time, attached by dprobe again and again
//! with probes on functions the C library calls while the thread blocks every signal (the
//! `madvise` of an ending thread's stack, the locale set-up of a starting one): it runs on and
//! ends as untraced. Under the agent, a probe's `int3` met there kills the program (the kernel
//! forces the trap's signal, and resets the action of a forced signal the thread blocks); its
//! jumps over one instruction go in and come off in one store, with no `int3` in between.
mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{dprobe_command, libc_function_starts_with_endbr64, out_file, Running};

/// `churns_threads`: prints "rounds N wrong W" once its standard input ends.
fn churns_threads() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/churns_threads.c");
    dprobe_test_fixtures::c_program(src, "churns_threads", &["-O2", "-pthread"])
}

/// dprobe's traces of the program. (Under the agent, a safepoint's handler that read past the
/// end of a new thread's stack killed it at the 14th, 20th and 48th.)
const TRACES: u32 = 60;

/// The hits a `--count` table gives `probe`.
fn hits(table: &str, probe: &str) -> u64 {
    let row = table.lines().find(|l| l.split_whitespace().next() == Some(probe));
    row.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or_else(|| panic!("no row {probe}: {table}"))
}

fn attached_again_and_again(engine: &str) {
    // With `endbr64` first (a C library built for CET), `madvise`'s jump covers two
    // instructions and goes in over an `int3`, which the agent's one store cannot replace.
    if engine == "agent" && libc_function_starts_with_endbr64(c"madvise") {
        return eprintln!("skipped: the C library's madvise starts with endbr64");
    }
    let child = Command::new(churns_threads()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut running = Running(child);
    let program = &mut running.0;
    let pid = program.id();
    let out = out_file(&format!("thread-churn-{engine}"));
    let mut madvised = 0;
    for trace in 0..TRACES {
        let status = dprobe_command()
            .args(["trace", "--engine", engine, "-c", "-d", "20ms", "-o", out.to_str().unwrap()])
            .args(["-p", &pid.to_string(), "libc:madvise", "libc:__ctype_init"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if let Some(ended) = program.try_wait().unwrap() {
            panic!("{engine}, trace {trace}: the program ended: {ended}");
        }
        assert!(status.success(), "{engine}, trace {trace}: {status}");
        madvised += hits(&std::fs::read_to_string(&out).unwrap(), "libc:madvise");
    }
    drop(program.stdin.take());
    let mut printed = String::new();
    program.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    let status = program.wait().unwrap();
    assert!(status.success(), "{engine}: {status}: {printed}");
    assert!(printed.starts_with("rounds ") && printed.ends_with(" wrong 0\n"), "{engine}: {printed}");
    assert!(madvised > 0, "{engine}: the probes were hit");
}

#[test]
fn a_program_churning_threads_lives_through_attaches_with_probes_where_it_blocks_every_signal_under_the_agent() {
    attached_again_and_again("agent");
}

#[test]
fn a_program_churning_threads_lives_through_attaches_with_probes_where_it_blocks_every_signal_under_ptrace() {
    attached_again_and_again("ptrace");
}
