//! Stopping dprobe with a signal while it traces a command it started: a `SIGINT` sent to
//! dprobe alone (not the terminal's Ctrl-C, which the command receives too) detaches and ends
//! dprobe at once; the command goes on, untraced, to its own end.
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{dprobe_command, out_file, started_command, target};

/// The first byte of `probed` in process `pid`, once it runs the target program.
fn first_byte_of_probed(pid: i32) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let maps = dprobe_sym::read_maps_of(pid as u32).ok()?;
    let at = dprobe_sym::Symbols::load(&maps).find("probed")?.start.0;
    let mut b = [0u8];
    std::fs::File::open(format!("/proc/{pid}/mem")).ok()?.read_exact_at(&mut b, at).ok()?;
    Some(b[0])
}

#[test]
fn sigint_to_dprobe_alone_detaches_and_exits_without_waiting_for_the_command() {
    let out = out_file("sigint-alone");
    let mut dprobe = dprobe_command()
        .args(["trace", "--count", "-o", out.to_str().unwrap(), "probed", "pair%return", "--", target(), "until-usr2"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Traced: the command started, and dprobe's breakpoint is in `probed` (read through
    // /proc, which shows the code as the command runs it). The deadline only keeps a broken
    // run from hanging the tests.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let command = loop {
        let command = started_command(dprobe.id());
        if let Some(c) = command.filter(|&c| first_byte_of_probed(c) == Some(0xcc)) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the command was never traced");
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: signals the dprobe we started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
    // A dprobe that waited for the command would wait for ever: the command ends only at
    // SIGUSR2, sent below once dprobe is gone (or, if dprobe hangs, by the watchdog).
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: ends the command the test started through dprobe, if it still runs.
        unsafe { libc::kill(command, libc::SIGUSR2) };
    });
    let status = dprobe.wait().unwrap();
    // SAFETY: probes whether the command still runs (signal 0 sends nothing).
    let running = unsafe { libc::kill(command, 0) } == 0;
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(running, "dprobe ended before the command: {text}");
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("detached from process {command}")) && text.contains("(SIGINT)"), "{text}");
    assert!(text.contains("goes on untraced"), "{text}");
    // SAFETY: ends the command, which goes on untraced.
    assert_eq!(unsafe { libc::kill(command, libc::SIGUSR2) }, 0);
    drop(watchdog);
}
