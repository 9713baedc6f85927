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

/// The first byte of `probed` as the target program has it, untraced.
fn untraced_first_byte() -> u8 {
    let mut child = std::process::Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let byte = loop {
        if let Some(b) = first_byte_of_probed(pid) {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "the untraced program never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    byte
}

#[test]
fn sigint_to_dprobe_alone_detaches_and_exits_without_waiting_for_the_command() {
    use std::io::BufRead;
    let original = untraced_first_byte();
    for engine in ["ptrace", "agent"] {
        let out = out_file(&format!("{engine}-sigint-alone"));
        let mut dprobe = dprobe_command()
            .args(["trace", "-v", "--engine", engine, "--count", "-o", out.to_str().unwrap()])
            .args(["probed", "pair%return", "--", target(), "until-usr2"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Traced once dprobe says so (its probes are live). Its standard error is read on, for
        // whatever it says after (the command, which shares it, keeps it open to its end).
        let (said, lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(dprobe.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = said.send(line);
            }
        });
        let mut told = String::new();
        loop {
            let line = lines.recv_timeout(Duration::from_secs(60)).expect("dprobe never said it traces");
            told.push_str(&line);
            told.push('\n');
            if line == "dprobe: tracing" {
                break;
            }
        }
        let command = started_command(dprobe.id()).expect("the command runs");
        let placed = first_byte_of_probed(command);
        assert!(placed.is_some_and(|b| b != original), "{engine}: `probed` is probed\n{told}");
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
        assert!(running, "{engine}: dprobe ended before the command: {text}");
        assert_eq!(status.code(), Some(0), "{engine}: {text}");
        assert!(text.contains(&format!("detached from process {command}")) && text.contains("(SIGINT)"), "{text}");
        assert!(text.contains("goes on untraced"), "{engine}: {text}");
        // SAFETY: ends the command, which goes on untraced.
        assert_eq!(unsafe { libc::kill(command, libc::SIGUSR2) }, 0);
        drop(watchdog);
    }
}
