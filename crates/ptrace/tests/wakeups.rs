//! Letting a program go never costs it a wakeup: threads asleep in `pause`, `nanosleep`,
//! `read` and `sigsuspend`, each woken by a signal its signaller sends only while it sleeps
//! in its call, are attached and let go again and again. Every signal must end exactly one
//! call, as it does untraced. A thread that is let go by waking it goes back into its call
//! through a moment where a signal runs its handler first and the call then sleeps on.
use std::time::{Duration, Instant};

use dprobe_ptrace::{ProbeDef, Tracee};
use dprobe_test_fixtures::wakeups::{Wakeups, CALLS};

/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(300);

/// Signals each signaller sends.
const SIGNALS: u32 = 20_000;
/// Threads waiting in each call, each with its signaller.
const PAIRS: u32 = 4;

/// What the program prints when every signal ended one call.
fn untraced_figures() -> String {
    let n = PAIRS * (SIGNALS + 1);
    CALLS.iter().map(|call| format!("{call} sent {n} handled {n} returned {n} lost 0\n")).collect()
}

#[test]
fn untraced_every_signal_ends_one_call() {
    let program = Wakeups::start(SIGNALS, PAIRS);
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
    let mut program = Wakeups::start(SIGNALS, PAIRS);
    let pid = program.pid() as i32;
    let (mut rounds, mut attaches) = (0, 0);
    let deadline = Instant::now() + DEADLOCK;
    while !program.done() {
        if Instant::now() > deadline {
            // A program that waits for ever fails on its figures.
            program.kill();
            break;
        }
        attaches += u32::from(one_attach(pid, rounds % 16 == 0));
        rounds += 1;
    }
    assert!(attaches > 0, "never attached in {rounds} tries");
    assert_eq!(program.finish(), (untraced_figures(), Some(0)), "after {attaches} attaches");
}
