//! Attaching and detaching again and again while the program works hard: its threads inside
//! probes at every moment, threads created and joined, signals queued. The program checks
//! its own sums and must end with the untraced ones, having received every signal.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::counter;
use dprobe_ptrace::{ProbeDef, TraceError, Tracee};

fn load() -> &'static str {
    dprobe_test_fixtures::c_program(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/load.c"),
        "load",
        &["-O2", "-pthread"],
    )
}

/// The program in `mode`, killed if the test fails before it ends.
struct Program(Child, BufReader<ChildStdout>);

impl Program {
    /// Start it, and wait until it says its handlers are installed and its threads run.
    fn start(mode: &str) -> Program {
        Program::start_with(&[mode])
    }

    fn start_with(args: &[&str]) -> Program {
        let mut child = Command::new(load()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        Program(child, out)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Its output and exit code, once it ends.
    fn finish(mut self) -> (String, Option<i32>) {
        let mut out = String::new();
        self.1.read_to_string(&mut out).unwrap();
        let status = self.0.wait().unwrap();
        (out, status.code())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// A watchdog for tests whose failure would be a hang: the program is killed (ending any
/// wait on it) if the test is not done in `limit`, and the test then fails on its output.
fn watchdog(pid: i32, limit: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !d.load(Relaxed) && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !d.load(Relaxed) {
            // SAFETY: signals the test's child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    done
}

/// How long one attach traces.
#[derive(Clone, Copy)]
enum Trace {
    /// This long (the hits, if any, are not counted on).
    For(Duration),
    /// Until every probe was hit (the program calls them all, always).
    UntilEachHit,
}

/// Attach, place entry, offset and return probes (one in an out-of-line copy), trace, detach.
/// Returns the hits seen.
fn one_attach(pid: i32, trace: Trace) -> u64 {
    let mut t = Tracee::attach(pid).unwrap();
    let (entries, e) = counter();
    let (offsets, o) = counter();
    let (returns, r) = counter();
    let (copies, c) = counter();
    t.add_probe("mix", e).unwrap();
    t.add_probe("mix+4", o).unwrap();
    t.add(ProbeDef::on_return("mix", r)).unwrap();
    t.add_probe("biased", c).unwrap();
    let all = [&entries, &offsets, &returns, &copies];
    match trace {
        Trace::For(traced) => assert_eq!(t.run_for(traced).unwrap(), None, "the program goes on"),
        Trace::UntilEachHit => {
            let stopped = t.run_until(&mut || all.iter().all(|n| n.load(Relaxed) > 0)).unwrap();
            assert!(matches!(stopped, dprobe_ptrace::Stopped::Asked), "the program goes on");
        }
    }
    t.detach().unwrap();
    all.iter().map(|n| n.load(Relaxed)).sum()
}

#[test]
fn two_hundred_attach_detach_cycles_under_a_four_thread_load_leave_its_sums_untouched() {
    let program = Program::start("busy");
    let done = watchdog(program.pid(), Duration::from_secs(300));
    let mut hits = 0;
    for _ in 0..200 {
        hits += one_attach(program.pid(), Trace::UntilEachHit);
    }
    done.store(true, Relaxed);
    assert!(hits >= 4 * 200);
    program.signal(libc::SIGUSR2);
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)), "no crash, the untraced sums");
}

/// Attach with a return probe that does not stop at the return: its stub page is mapped by an
/// injected system call at the first return-probed entry, while the other threads run on
/// through the same function (one resumed at `mix+1`, just past its emulated `push`, is where
/// the injecting thread stopped). Traces until a return was seen.
fn one_attach_with_stubs(pid: i32) -> u64 {
    let mut t = Tracee::attach(pid).unwrap();
    let (returns, r) = counter();
    t.add(ProbeDef::on_return("mix", r).no_return_stop()).unwrap();
    let stopped = t.run_until(&mut || returns.load(Relaxed) > 0).unwrap();
    assert!(matches!(stopped, dprobe_ptrace::Stopped::Asked), "the program goes on");
    t.detach().unwrap();
    returns.load(Relaxed)
}

#[test]
fn system_calls_injected_while_other_threads_run_the_same_code_never_reach_them() {
    let program = Program::start("busy");
    let done = watchdog(program.pid(), Duration::from_secs(300));
    let mut returns = 0;
    for _ in 0..200 {
        returns += one_attach_with_stubs(program.pid());
    }
    done.store(true, Relaxed);
    assert!(returns >= 200);
    program.signal(libc::SIGUSR2);
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)), "no crash, the untraced sums");
}

/// A thread asleep in `vfork` (its child sleeps) with a return address replaced by dprobe's
/// trampoline: a detach that gives up on it (as a second Ctrl-C does) lets the other threads
/// go; the kernel lets it go when the tracing thread ends. It must return to its caller then,
/// not into dprobe's trampoline.
#[test]
fn a_detach_given_up_leaves_no_thread_returning_into_dprobe() {
    // Three vforks, each child sleeping 1.5 s.
    let program = Program::start_with(&["vfork", "1500", "3"]);
    let pid = program.pid();
    let done = watchdog(pid, Duration::from_secs(60));
    let outcome = std::thread::spawn(move || {
        let mut t = Tracee::attach(pid).unwrap();
        let (_, r) = counter();
        let vforked = t.add(ProbeDef::on_return("vforked", r)).unwrap();
        while t.stats(vforked).hits == 0 {
            assert_eq!(t.run_for(Duration::from_millis(10)).unwrap(), None, "the program goes on");
        }
        // Now inside `vforked`, its return address replaced, asleep in vfork.
        assert_eq!(t.run_for(Duration::from_millis(100)).unwrap(), None);
        t.detach_giving_up(&|| true)
    })
    .join()
    .unwrap();
    done.store(true, Relaxed);
    assert!(matches!(outcome, Err(TraceError::GaveUp { waiting: 1 })), "{outcome:?}");
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)), "no crash, the untraced sums");
}

#[test]
fn attaching_while_a_thread_waits_in_vfork_fails_naming_it_and_does_not_hang() {
    // The child sleeps well past the bound of the wait for threads to stop.
    let program = Program::start_with(&["vfork", "6000"]);
    let done = watchdog(program.pid(), Duration::from_secs(60));
    let e = Tracee::attach(program.pid()).map(|_| ()).unwrap_err();
    done.store(true, Relaxed);
    let text = e.to_string();
    assert!(matches!(e, TraceError::Attach { .. }) && text.contains("waits in vfork for its child"), "{text}");
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)), "let go untouched");
}

#[test]
fn a_signal_storm_whose_handler_calls_the_probed_functions_during_attach_and_detach() {
    let program = Program::start("storm");
    let done = watchdog(program.pid(), Duration::from_secs(300));
    for _ in 0..100 {
        one_attach(program.pid(), Trace::For(Duration::from_millis(3)));
    }
    done.store(true, Relaxed);
    program.signal(libc::SIGUSR2);
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)), "no crash, the untraced sums");
}

#[test]
fn detaching_while_threads_are_created_and_joined_never_hangs() {
    let program = Program::start("churn");
    let done = watchdog(program.pid(), Duration::from_secs(300));
    for _ in 0..60 {
        one_attach(program.pid(), Trace::For(Duration::from_millis(3)));
    }
    done.store(true, Relaxed);
    program.signal(libc::SIGUSR2);
    assert_eq!(program.finish(), ("sums right\n".into(), Some(0)));
}

#[test]
fn three_thousand_queued_signals_across_fifty_attaches_all_arrive() {
    let program = Program::start("signals");
    let pid = program.pid();
    let done = watchdog(pid, Duration::from_secs(300));
    let queue = move |signal: i32| {
        // SAFETY: queues a signal to the test's child.
        let r = unsafe { libc::sigqueue(pid, signal, libc::sigval { sival_ptr: std::ptr::null_mut() }) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    };
    let sending = Arc::new(AtomicBool::new(true));
    let still = sending.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..3000 {
            queue(libc::SIGRTMIN());
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        still.store(false, Relaxed);
    });
    let mut attaches = 0;
    while attaches < 50 || sending.load(Relaxed) {
        one_attach(pid, Trace::For(Duration::from_millis(1)));
        attaches += 1;
    }
    sender.join().unwrap();
    done.store(true, Relaxed);
    // Queued after every SIGRTMIN, and delivered after them (lower real-time signals first).
    queue(libc::SIGRTMIN() + 1);
    assert_eq!(program.finish(), ("3000 sums right\n".into(), Some(0)), "every signal received");
}
