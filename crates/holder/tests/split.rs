//! The split into front and holder, seen from outside as a user and a shell see dprobe:
//! the front's status, the signals it passes on, and the holder outliving it.
//!
//! Each case runs this same program again in the role the case names, so that `split` runs
//! single-threaded, as it must.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

use dprobe_holder::split;
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::unistd::Pid;

const ROLE: &str = "DPROBE_HOLDER_TEST_ROLE";
const STOPS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        play(&role);
    }
    let cases: [(&str, fn()); 6] = [
        ("the front ends with the holder's exit code", exit_code_relayed),
        ("the front ends by the signal that killed the holder, and says so", killed_holder_named),
        ("a stop signal that killed the holder is not reported as a fault", stop_signal_not_reported),
        ("each stop signal sent to the front reaches the holder once, with its sender", each_signal_passed_once),
        ("a stop signal the program was started with ignored is not passed on", ignored_signal_kept),
        ("the holder outlives a front killed with SIGKILL and learns it ended", holder_outlives_front),
    ];
    for (name, case) in cases {
        eprint!("test {name} ... ");
        case();
        eprintln!("ok");
    }
}

/// The program in one role: split, then the holder does what the role says.
fn play(role: &str) -> ! {
    // Dispositions are inherited: a test run started under `nohup` or in the background
    // ignores SIGHUP or SIGINT. Each role starts from the defaults, as a program started from
    // a terminal does, so that what it is started with is the role's own choice.
    for stop in STOPS {
        // SAFETY: restoring the default installs no handler.
        unsafe { signal(stop, SigHandler::SigDfl) }.unwrap();
    }
    if role == "ignore-term" {
        // SAFETY: ignoring installs no handler.
        unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.unwrap();
    }
    let mut front = split(&STOPS).unwrap();
    match role {
        "exit" => std::process::exit(7),
        "kill" => nix::sys::signal::raise(Signal::SIGKILL).unwrap(),
        "term" => nix::sys::signal::raise(Signal::SIGTERM).unwrap(),
        "forward" | "ignore-term" => {
            println!("ready");
            let wanted = if role == "forward" { 2 } else { 1 };
            for f in front.by_ref().take(wanted) {
                println!("{} {}", f.signal, f.sender);
            }
            std::process::exit(3)
        }
        "outlive" => {
            println!("ready");
            let passed = front.by_ref().count();
            println!("front {} ended after {passed} signals", front.pid());
            std::process::exit(0)
        }
        _ => panic!("no role {role}"),
    }
    unreachable!("the holder was killed")
}

fn start(role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for the holder's "ready" (it has split: the front holds the stop signals).
fn ready(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    out
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    text
}

fn exit_code_relayed() {
    let mut child = start("exit");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(stderr_of(&mut child), "");
}

fn killed_holder_named() {
    let mut child = start("kill");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    let said = stderr_of(&mut child);
    assert!(said.starts_with("dprobe: its tracing process ") && said.ends_with(" was killed by SIGKILL\n"), "{said}");
}

fn stop_signal_not_reported() {
    let mut child = start("term");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    assert_eq!(stderr_of(&mut child), "");
}

fn each_signal_passed_once() {
    let mut child = start("forward");
    let out = ready(&mut child);
    let front = Pid::from_raw(child.id() as i32);
    kill(front, Signal::SIGTERM).unwrap();
    kill(front, Signal::SIGHUP).unwrap();
    let me = std::process::id();
    let lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    // Two signals may be pending together in the front: each is passed on once, in the
    // kernel's order (lowest number first).
    let mut expected = vec![format!("{} {me}", Signal::SIGTERM as i32), format!("{} {me}", Signal::SIGHUP as i32)];
    let mut got = lines.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{lines:?}");
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

fn ignored_signal_kept() {
    let mut child = start("ignore-term");
    let out = ready(&mut child);
    let front = Pid::from_raw(child.id() as i32);
    kill(front, Signal::SIGTERM).unwrap();
    kill(front, Signal::SIGINT).unwrap();
    let lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    assert_eq!(lines, [format!("{} {}", Signal::SIGINT as i32, std::process::id())]);
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

fn holder_outlives_front() {
    let mut child = start("outlive");
    let out = ready(&mut child);
    let front = child.id();
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
    // The holder still writes to the pipe after its front is gone; its end is the holder's.
    let lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    assert_eq!(lines, [format!("front {front} ended after 0 signals")]);
}
