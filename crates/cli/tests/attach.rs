//! `dprobe trace -p PID`: attach to a running program (ptrace, or the agent loaded into it),
//! trace every thread, and let it go on Ctrl-C or at the end of `--duration`, as if it had
//! never been traced.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{dprobe_command, file_mappings, function_addr, hits, out_file, read_mem, target};

/// The running target; killed if a test fails before it finishes it.
struct Running(Child);

impl Running {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_target() -> Running {
    let child = Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap();
    // Its 4 workers are running (its signal handlers are installed before they start).
    let pid = child.id();
    while std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    Running(child)
}

fn finish(mut child: Running) -> Option<i32> {
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) }, 0);
    child.0.wait().unwrap().code()
}

#[test]
fn ctrl_c_detaches_and_the_program_finishes_with_its_own_result() {
    for engine in ["ptrace", "agent"] {
        let child = start_target();
        let pid = child.id() as i32;
        let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let code_before: Vec<Vec<u8>> =
            ["probed", "probed_push", "pair"].iter().map(|f| read_mem(pid, function_addr(pid, f), 32)).collect();
        let out = out_file(&format!("{engine}-attach-sigint"));
        let p = pid.to_string();
        let mut dprobe = dprobe_command()
            .args(["trace", "--engine", engine, "-o", out.to_str().unwrap(), "-p", &p])
            .args(["probed", "probed_push x=$arg1", "pair%return", "until_told%return"])
            .spawn()
            .unwrap();
        // Interrupt once events came (100 calls and 100 returns written), however long that
        // takes on a loaded machine; the deadline only keeps a broken run from hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let calls = text.lines().filter(|l| l.contains(" call probed(")).count();
            let returns = text.lines().filter(|l| l.contains(" pair returns ")).count();
            if calls >= 100 && returns >= 100 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{engine}: no events came: {calls} calls, {returns} returns");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: signals the dprobe we started.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
        let status = dprobe.wait().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status.code(), Some(0), "{engine}\n{text}");
        assert!(
            text.contains(&format!("detached from process {pid}")) && text.contains("(SIGINT)"),
            "{engine}\n{text}"
        );
        assert!(hits(&text, "probed") >= 100 && hits(&text, "pair%return") >= 100, "{engine}\n{text}");
        let code_after: Vec<Vec<u8>> =
            ["probed", "probed_push", "pair"].iter().map(|f| read_mem(pid, function_addr(pid, f), 32)).collect();
        assert_eq!(code_after, code_before, "{engine}: the original code, byte for byte");
        let maps_after = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if engine == "ptrace" {
            assert_eq!(maps_after, maps_before, "no page of dprobe's left behind");
        } else {
            // The agent's library stays loaded (unloading code that a thread may still be
            // returning into is not safe), and with it the libraries it needs: every mapping
            // of the program's own files is as it was.
            let after = file_mappings(&maps_after);
            let changed: Vec<&str> = file_mappings(&maps_before).into_iter().filter(|m| !after.contains(m)).collect();
            assert!(changed.is_empty(), "{engine}: mappings changed: {changed:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(finish(child), Some(0), "{engine}: it finished with the results it computes untraced");
    }
}

#[test]
fn duration_ends_the_trace_and_leaves_the_program_running() {
    let child = start_target();
    let p = child.id().to_string();
    let (code, out) = common::trace("attach-duration", &["--count", "--duration", "300ms", "-p", &p, "pair%return"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(--duration is over)"), "{out}");
    assert!(hits(&out, "pair%return") > 0);
    assert_eq!(finish(child), Some(0));
}

#[test]
fn list_shows_the_functions_of_a_running_process() {
    let child = start_target();
    let p = child.id().to_string();
    let o = common::dprobe(&["list", "-p", &p, "probed*"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text.lines().collect::<Vec<_>>(), ["target:probed", "target:probed_push"], "{text}");
    let o = common::dprobe(&["list", "-p", &p, "libc:open+0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("(libc.so.6:open@@GLIBC_2.2.5+0x0): `"), "{text}");
    assert!(text.contains("` can be probed: "), "{text}");
    assert_eq!(finish(child), Some(0));
}

/// A probe on a library the running program has not loaded yet: the agent (the engine
/// chosen by default) places it when the program loads the library, as ptrace does, and
/// counts every call exactly.
#[test]
fn a_library_loaded_after_the_attach_is_probed_by_the_default_engine_and_ptrace() {
    use std::io::{BufRead, BufReader, Write};
    const CALLS: u64 = 1000;
    let probe = "libdprobe_plugin:plugin_twice";
    for (engine, chosen) in [(None, "agent"), (Some("ptrace"), "ptrace")] {
        let name = engine.unwrap_or("default");
        let mut child = Command::new(target())
            .args(["dlopen-when-told", common::plugin(), &CALLS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut said).unwrap();
        assert_eq!(said, "ready\n");
        let mut child = Running(child);
        let p = child.id().to_string();
        let out = out_file(&format!("{name}-attach-later-library"));
        let mut dprobe = dprobe_command()
            .args(["trace", "-v", "--count", "-o", out.to_str().unwrap(), "-p", &p, probe])
            .args(engine.map(|e| ["--engine", e]).iter().flatten())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Told to load the library once dprobe traces it.
        let mut told = String::new();
        for line in BufReader::new(dprobe.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            told.push_str(&line);
            told.push('\n');
            if line == "dprobe: tracing" {
                break;
            }
        }
        assert!(told.contains(&format!("dprobe: engine: {chosen} (")), "{name}: {told}");
        child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        // dprobe ends with the program, normally, before its parent has asked how it ended (a
        // zombie has ended): its status is the program's, which the ptrace engine knows as
        // its tracer, and dprobe reads in the zombie's `/proc` entry with the agent.
        let status = dprobe.wait().unwrap();
        assert_eq!(child.0.wait().unwrap().code(), Some(0), "{name}: the program's own result");
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status.code(), Some(0), "{name}\n{told}{text}");
        let ended = format!("process {p} exited with status 0 after ");
        assert!(text.contains(&ended), "{name}: {ended}\n{told}{text}");
        assert_eq!(hits(&text, probe), CALLS, "{name}\n{told}{text}");
    }
}
