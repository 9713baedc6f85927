//! `dprobe trace --engine agent`: the in-process engine loaded into the traced program. The
//! same results as the ptrace engine's for started commands and attached processes, and
//! nothing left of dprobe in the program's code when dprobe stops, even killed.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{function_addr, hits, out_file, read_mem, target, trace};

fn agent(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--engine", "agent"];
    all.extend_from_slice(args);
    trace(name, &all)
}

#[test]
fn every_open_that_cat_makes_with_path_and_flags() {
    let file = out_file("agent-hello.txt");
    std::fs::write(&file, "hello\n").unwrap();
    let path = file.to_str().unwrap();
    let (code, out) = agent("agent-cat", &["libc:open path=+0($arg1):string flags=$arg2:x32", "--", "cat", path]);
    assert_eq!(code, Some(0), "cat's status\n{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("process 'cat'")).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].ends_with(&format!(" call open(path=\"{path}\", flags=0x0)")), "{out}");
    assert!(out.contains("exited with status 0"), "{out}");
}

#[test]
fn failed_opens_with_the_errno_name_and_the_exit_status_of_cat() {
    let probe = "libc:open%return ret=$retval:s32 err=$errno";
    let (code, out) =
        agent("agent-fails", &[probe, "--filter", "ret < 0", "--", "cat", "/nonexistent", "/etc/hostname"]);
    assert_eq!(code, Some(1), "cat failed on one file\n{out}");
    let failed: Vec<&str> = out.lines().filter(|l| l.contains(" returns ")).collect();
    assert_eq!(failed.len(), 1, "only the failed open passes the filter\n{out}");
    assert!(failed[0].ends_with(" open returns -1 (ENOENT)"), "{out}");
    assert_eq!(hits(&out, "libc:open%return"), 2);
}

#[test]
fn eight_threads_counted_exactly() {
    let (code, out) =
        agent("agent-threads", &["--count", "probed", "probed_push", "--", target(), "threads", "8", "20000"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((hits(&out, "probed"), hits(&out, "probed_push")), (160_000, 160_000), "{out}");
    assert!(!out.contains("process '"), "--count prints no events");
}

#[test]
fn returns_filters_and_json() {
    let args = ["--json", "recurse%return depth=$arg1:u8", "--filter", "depth >= 2", "--", target(), "recurse", "3"];
    let (code, out) = agent("agent-json", &args);
    assert_eq!(code, Some(0), "{out}");
    let events: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(events.len(), 2, "{out}");
    assert!(events[0].contains("\"kind\":\"return\",\"args\":{\"ret\":2,\"depth\":2}"), "{}", events[0]);
}

#[test]
fn a_forked_child_keeps_the_agent_and_its_events_carry_its_pid() {
    let (code, out) = agent("agent-fork", &["probed x=$arg1", "probed_push", "--", target(), "fork"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((hits(&out, "probed"), hits(&out, "probed_push")), (2, 1), "the parent's call and the child's\n{out}");
    let pid_of = |call: &str| {
        let line = out.lines().find(|l| l.ends_with(call)).unwrap_or_else(|| panic!("no {call} in\n{out}"));
        line.split(['(', ')']).nth(1).unwrap().to_owned()
    };
    let (parent, child) = (pid_of("call probed(x=0xa)"), pid_of("call probed(x=0x14)"));
    assert_ne!(parent, child, "the child's events carry its own pid\n{out}");
    assert_eq!(pid_of("call probed_push()"), child);
    assert!(out.contains(&format!("process {parent} exited with status 0")), "{out}");
}

#[test]
fn a_static_program_is_refused_with_the_reason() {
    let (code, _) = agent("agent-static-probe", &["probed", "--", "/nonexistent/program"]);
    assert_eq!(code, Some(2));
    let o = common::dprobe(&["trace", "--engine", "agent", "probed", "--", static_program()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("it has no dynamic loader (a static program)"), "{stderr}");
}

fn static_program() -> &'static str {
    let src = out_file("static.c");
    std::fs::write(&src, "int probed(int x) { return x + 1; }\nint main(void) { return probed(-1); }\n").unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "static-program", &["-O1", "-static"])
}

/// The running target; killed if a test fails before it finishes it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` has a thread named `dprobe-agent`.
fn has_agent_thread(pid: i32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "dprobe-agent"))
}

/// Wait (at most 120 s: a bound against hanging, not a measure) until `done`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "still waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const PROBED: [&str; 3] = ["probed", "probed_push", "pair"];

fn code_of(pid: i32) -> Vec<Vec<u8>> {
    PROBED.iter().map(|f| read_mem(pid, function_addr(pid, f), 32)).collect()
}

/// Attach to the target's 4 busy workers, then end dprobe with `signal` once events flow.
fn attach_and_end_with(name: &str, signal: i32, extra: &[&str]) -> (Running, Vec<Vec<u8>>, Child, String) {
    let mut child =
        Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap());
    let pid = child.0.id() as i32;
    wait_until("its 4 workers running", || std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() == 5);
    let before = code_of(pid);
    let out = out_file(name);
    let p = pid.to_string();
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "agent", "-o", out.to_str().unwrap(), "-p", &p])
        .args(extra)
        .args(["probed", "probed_push x=$arg1", "pair%return"])
        .spawn()
        .unwrap();
    wait_until("the agent's thread in the program", || has_agent_thread(pid));
    wait_until("every probe placed", || code_of(pid).iter().zip(&before).all(|(now, was)| now[0] != was[0]));
    // Every worker makes 1000 calls with the probes in place (the program says when).
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "1000 calls each\n");
    // SAFETY: signals the dprobe we started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, signal) }, 0);
    let status = dprobe.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if signal == libc::SIGINT {
        assert_eq!(status.code(), Some(0), "{text}");
    }
    wait_until("the agent's thread gone", || !has_agent_thread(pid));
    (child, before, dprobe, text)
}

fn finish(mut child: Running) -> Option<i32> {
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGUSR2) }, 0);
    child.0.wait().unwrap().code()
}

#[test]
fn ctrl_c_removes_every_probe_and_the_program_finishes_with_its_own_result() {
    let (child, before, _, text) = attach_and_end_with("agent-sigint", libc::SIGINT, &["--count"]);
    let pid = child.0.id() as i32;
    assert!(text.contains(&format!("detached from process {pid}")) && text.contains("(SIGINT)"), "{text}");
    assert!(hits(&text, "probed") > 100 && hits(&text, "pair%return") > 100, "{text}");
    assert_eq!(code_of(pid), before, "the original code, byte for byte");
    assert_eq!(finish(child), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn dprobe_killed_leaves_the_program_as_it_was() {
    let (child, before, _, _) = attach_and_end_with("agent-sigkill", libc::SIGKILL, &[]);
    let pid = child.0.id() as i32;
    assert_eq!(code_of(pid), before, "the original code, byte for byte, with dprobe dead");
    assert_eq!(finish(child), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn dprobe_alone_carries_its_agent() {
    // A copy of dprobe in a directory of its own: no agent library next to it.
    let alone = out_file("alone").join("dprobe");
    std::fs::create_dir_all(alone.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_dprobe"), &alone).unwrap();
    let out = out_file("agent-alone.txt");
    let o = Command::new(&alone)
        .args(["trace", "--engine", "agent", "--count", "-o", out.to_str().unwrap(), "probed"])
        .args(["--", target(), "threads", "2", "1000"])
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{}{text}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hits(&text, "probed"), 2000, "{text}");
}

#[test]
fn ls_recursive_opens_each_directory_once() {
    let root = out_file("agent-tree");
    let _ = std::fs::remove_dir_all(&root);
    let dirs = ["a", "a/b", "a/b/c", "d", "e"];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("f"), "x").unwrap();
    }
    let r = root.to_str().unwrap();
    let (code, out) = agent("agent-ls", &["libc:opendir path=+0($arg1):string", "--", "ls", "-R", r]);
    assert_eq!(code, Some(0), "{out}");
    let opened: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split("call opendir(path=\"").nth(1))
        .map(|p| p.trim_end_matches("\")").to_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        std::iter::once(r.to_owned()).chain(dirs.iter().map(|d| format!("{r}/{d}"))).collect();
    assert_eq!(opened, expected);
    assert_eq!(hits(&out, "libc:opendir"), 6);
}

#[test]
fn killing_the_tracee_ends_dprobe_with_its_summary() {
    let out = out_file("agent-killed");
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "agent", "-o", out.to_str().unwrap(), "probed", "--", target(), "until-usr2"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a call", || std::fs::read_to_string(&out).unwrap_or_default().contains(" call probed("));
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", dprobe.id())).unwrap();
    let tracee: i32 = children.split_whitespace().next().expect("the tracee").parse().unwrap();
    // SAFETY: kills the program dprobe started.
    assert_eq!(unsafe { libc::kill(tracee, libc::SIGKILL) }, 0);
    let status = dprobe.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status.code(), Some(128 + 9), "{text}");
    assert!(text.contains(&format!("process {tracee} was killed by SIGKILL")), "{text}");
    assert!(hits(&text, "probed") > 0, "{text}");
}
