//! `dprobe trace -p PID -d ...` again and again on a program whose threads wait in `pause`,
//! `nanosleep`, `read` and `sigsuspend`, each woken by signals sent only while it sleeps in its
//! call (and the moment it is no longer traced): every signal still ends exactly one call, as
//! untraced, and each dprobe ends with the program running untraced. The ptrace engine lets a
//! thread waiting in a call go without waking it (`dprobe-ptrace`'s `wakeups` test aims at the
//! moment that costs a wakeup; this one checks the path dprobe itself takes, to its exit).
mod common;
#[path = "common/ending.rs"]
mod ending;
#[path = "common/killing.rs"]
mod killing;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};

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

/// `waits_for_a_signal`: waits in `sigsuspend` until SIGUSR1, then prints "woken".
fn waits_for_a_signal() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waits_for_a_signal.c");
    dprobe_test_fixtures::c_program(src, "waits_for_a_signal", &["-O2"])
}

/// A program let go at the end of a trace while it waits in a system call is untraced at
/// once, not when dprobe has written its summary: here dprobe's output is a FIFO whose reader
/// reads nothing until the program has handled a signal sent after the let-go, so dprobe
/// waits in that write meanwhile. The ptrace engine puts such a thread back into its call
/// still traced, untraced when its tracer thread ends (see `Tracee::let_go_as_thread_ends`):
/// dprobe traces from a thread that ends once the program is let go. Traced from dprobe's
/// main thread, the program stayed traced until dprobe's end, after its summary: its signal
/// waited for dprobe's reader.
#[test]
fn a_program_let_go_runs_untraced_while_dprobe_still_writes_its_summary() {
    let mut program = ending::Running(Command::new(waits_for_a_signal()).stdout(Stdio::piped()).spawn().unwrap());
    let program = &mut program.0;
    let mut said = BufReader::new(program.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = program.id() as i32;
    let fifo = out_file("let-go.fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // The reader, opened without waiting for a writer; its pipe made as small as it goes (a
    // page), which a line per probe of the summary overfills.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    // SAFETY: fcntl on a descriptor this test owns.
    let size = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
    let mut dprobe = dprobe_command()
        .args(["trace", "--engine", "ptrace", "-d", "300ms", "-o", fifo.to_str().unwrap(), "-p", &pid.to_string()])
        .args(["libc:str*", "libc:mem*", "libc:wcs*"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut waiting = 0;
    // SAFETY: FIONREAD writes an int to `waiting`.
    let full = || unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut waiting) } == 0 && waiting == 4096;
    killing::wait_until("dprobe to fill its output", full);
    // The summary is written once the program is let go: dprobe waits in that write now.
    killing::wait_until("the program untraced while dprobe writes its summary", || !killing::traced(pid));
    assert!(dprobe.try_wait().unwrap().is_none(), "dprobe waits for its reader");
    // SAFETY: signals the program this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    killing::wait_until("the program to end on its signal", || program.try_wait().unwrap().is_some());
    let mut rest = String::new();
    said.read_to_string(&mut rest).unwrap();
    assert_eq!((rest.as_str(), program.wait().unwrap().code()), ("woken\n", Some(0)));
    assert!(dprobe.try_wait().unwrap().is_none(), "dprobe still waits for its reader");
    // SAFETY: clears O_NONBLOCK on the reader this test owns: read to dprobe's end.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, 0) };
    let mut summary = String::new();
    reader.read_to_string(&mut summary).unwrap();
    assert!(dprobe.wait().unwrap().success());
    let last = summary.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("dprobe: detached from process {pid}")), "{last}");
    assert!(last.ends_with("it goes on untraced"), "{last}");
}
