//! What is the agent engine's own: a forked child keeps it, a static program is refused, dprobe
//! killed leaves nothing of its own in the program's code, and dprobe carries the agent in its
//! own binary. What it does as the ptrace engine does is tested with both (trace.rs, attach.rs).
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
fn with_follow_a_forked_child_keeps_the_agent_and_its_events_carry_its_pid() {
    let (code, out) = agent("agent-fork", &["--follow", "probed x=$arg1", "probed_push", "--", target(), "fork"]);
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

/// A program with a dynamic loader and no C library: it exits with `probed(1)`, 2.
fn no_libc_program() -> &'static str {
    let src = out_file("no-libc.c");
    let code = "__attribute__((noinline)) int probed(int x) { return x + 1; }\n\
                void _start(void) {\n\
                  int code = probed(1);\n\
                  __asm__ volatile(\"mov $60, %%eax\\n syscall\" :: \"D\"(code) : \"rax\");\n\
                  for (;;) {}\n\
                }\n";
    std::fs::write(&src, code).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "no-libc", &["-O1", "-nostdlib", "-fPIE", "-pie"])
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

/// The lines of process `pid`'s maps that are dprobe's images of its files (the C library's
/// and the loader's bytes, handed to the agent for its session).
fn images_mapped(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().filter(|l| l.contains("dprobe-image")).map(str::to_owned).collect()
}

/// The target running `until-usr2`, once its 4 workers run; and its process id.
fn running_until_usr2() -> (Running, i32) {
    let child = Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    wait_until("its 4 workers running", || std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() == 5);
    (child, pid)
}

/// The session over (dprobe detached after its duration), the program keeps nothing of what
/// the session read of its files: the images dprobe handed over are unmapped.
#[test]
fn a_detached_program_keeps_no_image_of_its_files() {
    let (child, pid) = running_until_usr2();
    let p = pid.to_string();
    let o = common::dprobe(&["trace", "--engine", "agent", "-c", "-d", "300ms", "-o", "/dev/null", "-p", &p, "pair"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until("the agent's thread gone", || !has_agent_thread(pid));
    assert_eq!(images_mapped(pid), Vec::<String>::new());
    assert_eq!(finish(child), Some(0));
}

const PROBED: [&str; 3] = ["probed", "probed_push", "pair"];

fn code_of(pid: i32) -> Vec<Vec<u8>> {
    PROBED.iter().map(|f| read_mem(pid, function_addr(pid, f), 32)).collect()
}

/// dprobe killed (`SIGKILL`, nothing of it runs after) while the target's 4 workers hammer
/// the probed functions in the process it attached to.
#[test]
fn dprobe_killed_leaves_the_program_as_it_was() {
    let mut child =
        Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap());
    let pid = child.0.id() as i32;
    wait_until("its 4 workers running", || std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() == 5);
    let before = code_of(pid);
    let out = out_file("agent-sigkill");
    let p = pid.to_string();
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "agent", "-o", out.to_str().unwrap(), "-p", &p])
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
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGKILL) }, 0);
    dprobe.wait().unwrap();
    wait_until("the agent's thread gone", || !has_agent_thread(pid));
    assert_eq!(code_of(pid), before, "the original code, byte for byte, with dprobe dead");
    assert_eq!(images_mapped(pid), Vec::<String>::new(), "dprobe's images of the files given back");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
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

/// Without `--engine`, a running process and a started command get the agent, and `-v` says
/// so; ptrace where the agent cannot be loaded, and `-v` says why.
#[test]
fn the_engine_is_chosen_and_v_says_why() {
    let (child, pid) = running_until_usr2();
    let p = pid.to_string();
    let out = out_file("choice-attach");
    let o = common::dprobe(&["trace", "-v", "--count", "-d", "300ms", "-o", out.to_str().unwrap(), "-p", &p, "pair"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("dprobe: engine: agent (one program is traced"), "{stderr}");
    assert!(hits(&std::fs::read_to_string(&out).unwrap(), "pair") > 0);
    assert_eq!(finish(child), Some(0));

    let o = common::dprobe(&["trace", "-v", "--count", "-o", "/dev/null", "probed", "--", target(), "loop", "10"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("dprobe: engine: agent (one program is traced"), "{stderr}");
    // A program with a dynamic loader but no C library: there is no point after the C
    // library's initialisation to load the agent at, and ptrace traces it, counting exactly.
    let out = out_file("choice-no-libc");
    let o = common::dprobe(&["trace", "-v", "--count", "-o", out.to_str().unwrap(), "probed", "--", no_libc_program()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(hits(&std::fs::read_to_string(&out).unwrap(), "probed"), 1, "{stderr}");
    assert!(
        stderr.contains("dprobe: engine: ptrace (the agent could not be loaded: ")
            && stderr.contains("its C library's initialisation could not be found"),
        "{stderr}"
    );
    let o = common::dprobe(&["trace", "-v", "--count", "-o", "/dev/null", "probed", "--", static_program()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("is a static program (no dynamic loader)"), "{stderr}");
}

/// `-v` says how each of the agent's probes is reached: `probed` (`lea; ret`: a 5-byte first
/// instruction) by a jump, its last byte (the `ret`, whose jump would have to start on the
/// `lea`, under the entry's jump) by a trap, with the reason. Both count every call.
#[test]
fn v_says_whether_each_agent_probe_jumps_or_traps() {
    let out = out_file("agent-jump-or-trap");
    let o = common::dprobe(&[
        "trace",
        "-v",
        "--engine",
        "agent",
        "--count",
        "-o",
        out.to_str().unwrap(),
        "probed",
        "probed+5",
        "--",
        target(),
        "loop",
        "1000",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("dprobe: `probed`: jump-optimized (no trap)"), "{stderr}");
    assert!(
        stderr.contains("dprobe: `probed+5`: on int3, a trap per hit: another probe at ")
            && stderr.contains("sits inside the bytes the jump would replace"),
        "{stderr}"
    );
    let summary = std::fs::read_to_string(&out).unwrap();
    assert_eq!((hits(&summary, "probed"), hits(&summary, "probed+5")), (1000, 1000), "{summary}");
}

fn finish(mut child: Running) -> Option<i32> {
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGUSR2) }, 0);
    child.0.wait().unwrap().code()
}
