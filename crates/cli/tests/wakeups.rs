//! `dprobe trace -p PID -d ...` again and again on a program whose threads wait in `pause`,
//! `nanosleep`, `read` and `sigsuspend`, each woken by signals sent only while it sleeps in its
//! call (and the moment it is no longer traced): every signal still ends exactly one call, as
//! untraced, and each dprobe ends with the program running untraced. The ptrace engine lets a
//! thread waiting in a call go without waking it (`dprobe-ptrace`'s `wakeups` test aims at the
//! moment that costs a wakeup; this one checks the path dprobe itself takes, to its exit).
mod common;

use std::process::Stdio;

use common::{dprobe_command, out_file};
use dprobe_test_fixtures::wakeups::{Wakeups, CALLS};

/// Threads waiting in each call, each with its signaller.
const PAIRS: u32 = 2;
/// dprobe's traces of the program.
const TRACES: u32 = 6;

/// Whether the figures say that every signal ended one call, each call's signals counted.
fn every_signal_ended_one_call(figures: &str) -> bool {
    let calls: Vec<&str> = figures.lines().map(|l| l.split(' ').next().unwrap_or("")).collect();
    calls == CALLS
        && figures.lines().all(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            matches!(words[..], [_, "sent", s, "handled", h, "returned", r, "lost", "0"]
                if s == h && h == r && s.parse::<u64>().is_ok_and(|s| s > 0))
        })
}

#[test]
fn attached_by_dprobe_again_and_again_every_signal_still_ends_one_call() {
    // Signallers that send until the end of the program's input.
    let program = Wakeups::start(0, PAIRS);
    let pid = program.pid().to_string();
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
    assert!(!program.done(), "it still runs");
    let (figures, code) = program.finish();
    assert!(every_signal_ended_one_call(&figures) && code == Some(0), "{figures}{code:?}");
}
