//! `kill -9` of dprobe never harms the program it traces: at moments spread over its startup,
//! its placing of probes and its steady state, 20 times, an attached 4-thread program and a
//! command dprobe started both carry on and finish with the results they compute untraced
//! (each checks every result it computes and exits 0 only when all are right).
//!
//! dprobe traces from a process of its own that outlives the `dprobe` the user kills: it
//! removes every probe and lets the program go, as on a SIGINT sent to dprobe alone.
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{file_mappings, function_addr, out_file, read_mem, started_command, target};
use killing::{become_subreaper, kill_and_reap, start_dprobe, traced, wait_until, Moment, Moments};

const TRIES: u32 = 20;

/// The running target; killed if a test fails before it finishes it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether dprobe wrote an event to `out` yet.
fn events_came(out: &std::path::Path) -> bool {
    std::fs::read_to_string(out).unwrap_or_default().contains(" call probed")
}

/// What dprobe wrote when its tracing ended, if it got that far: the closing line names the
/// end of dprobe's process (the only way this trace ends).
fn check_summary(i: u32, text: &str, front: u32) {
    if let Some(line) = text.lines().find(|l| l.contains("after") && l.contains("process")) {
        assert!(line.contains(&format!("(the end of dprobe's process {front})")), "try {i}: {text}");
    }
}

#[test]
fn kill_9_of_dprobe_attached_to_a_4_thread_program_leaves_it_running_right() {
    kill_9_while_attached("ptrace");
}

#[test]
fn kill_9_of_dprobe_with_its_agent_in_a_4_thread_program_leaves_it_running_right() {
    kill_9_while_attached("agent");
}

/// Whether dprobe has reached the program: it traces it, or its agent is loaded there.
fn reached_by(engine: &str, pid: i32) -> bool {
    traced(pid) || engine == "agent" && agent_loaded(pid)
}

/// Whether dprobe's agent is loaded in process `pid`.
fn agent_loaded(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().contains("dprobe-agent")
}

fn kill_9_while_attached(engine: &str) {
    become_subreaper();
    let mut child = Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    wait_until("its workers", || std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() >= 5);
    let functions = ["probed", "probed_push", "pair", "until_told"];
    let addrs: Vec<u64> = functions.iter().map(|f| function_addr(pid, f)).collect();
    let code = || -> Vec<Vec<u8>> { addrs.iter().map(|&a| read_mem(pid, a, 32)).collect() };
    let code_before = code();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let p = pid.to_string();
    let mut moments = Moments::new();
    let mut reached = [0u32; 3];
    for i in 0..TRIES {
        let out = out_file(&format!("killed-attach-{engine}-{i}"));
        let err = out_file(&format!("killed-attach-{engine}-{i}.err"));
        let args = ["--engine", engine, "-p", &p, "probed", "probed_push x=$arg1", "pair%return", "until_told%return"];
        let dprobe = start_dprobe(&args, &out, &err);
        let moment = Moment::of_try(i);
        match moment {
            Moment::Startup => std::thread::sleep(moments.below(Duration::from_millis(30))),
            Moment::Placing => {
                wait_until("the attach", || reached_by(engine, pid));
                std::thread::sleep(moments.below(Duration::from_millis(10)));
            }
            Moment::Steady => {
                wait_until("events", || events_came(&out));
                std::thread::sleep(moments.below(Duration::from_millis(50)));
            }
        }
        let was_traced = reached_by(engine, pid);
        let ended = kill_and_reap(dprobe);
        reached[moment as usize] += u32::from(was_traced);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!stderr.contains("panicked") && !text.contains("panicked"), "try {i}: {stderr}{text}");
        check_summary(i, &text, dprobe);
        // The program is alive, running (neither stopped nor traced), and unchanged.
        assert!(child.0.try_wait().unwrap().is_none(), "try {i} ({moment:?}): the program died: {ended:?}\n{text}");
        assert!(!traced(pid), "try {i}: still traced");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = state.rsplit_once(") ").unwrap().1.chars().next().unwrap();
        assert!(matches!(state, 'R' | 'S'), "try {i}: the program is in state {state}");
        assert_eq!(code(), code_before, "try {i} ({moment:?}): the original code, byte for byte");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if engine == "ptrace" {
            assert_eq!(maps, maps_before, "try {i} ({moment:?}): no page of dprobe's left behind");
        } else {
            // The agent's library and its pages stay mapped (unused); every mapping of the
            // program's own files is as it was.
            let after = file_mappings(&maps);
            let changed: Vec<&str> = file_mappings(&maps_before).into_iter().filter(|m| !after.contains(m)).collect();
            assert!(changed.is_empty(), "try {i} ({moment:?}): mappings changed: {changed:?}");
        }
    }
    eprintln!("killed while tracing (startup, placing, steady): {reached:?} of {TRIES}");
    assert!(reached[Moment::Steady as usize] > 0, "no kill came while the program was traced");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn kill_9_of_dprobe_that_started_a_command_lets_the_command_finish_right() {
    kill_9_with_a_started_command("ptrace");
}

/// The agent is loaded into a started command before its constructors, a thread of the
/// command made to call `dlopen`: a kill while that call is under way, while the command
/// waits for its probes, or while it runs watched for its `exec`, lets it go on as untraced.
#[test]
fn kill_9_of_dprobe_loading_its_agent_into_a_started_command_lets_the_command_finish_right() {
    kill_9_with_a_started_command("agent");
}

fn kill_9_with_a_started_command(engine: &str) {
    become_subreaper();
    // 4 threads, each 20,000 calls of both functions, every result checked.
    let command = [target(), "threads", "4", "20000"];
    let untraced = Command::new(command[0]).args(&command[1..]).status().unwrap();
    assert_eq!(untraced.code(), Some(0), "untraced");
    let mut moments = Moments::new();
    let mut reached = [0u32; 3];
    let mut loading = 0;
    for i in 0..TRIES {
        let out = out_file(&format!("killed-command-{engine}-{i}"));
        let err = out_file(&format!("killed-command-{engine}-{i}.err"));
        let mut args = vec!["--engine", engine, "probed", "probed_push%return", "--"];
        args.extend_from_slice(&command);
        let dprobe = start_dprobe(&args, &out, &err);
        let moment = Moment::of_try(i);
        match moment {
            Moment::Startup => std::thread::sleep(moments.below(Duration::from_millis(30))),
            Moment::Placing => {
                wait_until("the command", || started_command(dprobe).is_some());
                std::thread::sleep(moments.below(Duration::from_millis(10)));
            }
            Moment::Steady => {
                wait_until("events", || events_came(&out));
                std::thread::sleep(moments.below(Duration::from_millis(50)));
            }
        }
        let was_started = started_command(dprobe).is_some();
        if started_command(dprobe).is_some_and(|c| traced(c) && !agent_loaded(c)) {
            loading += 1;
        }
        let ended = kill_and_reap(dprobe);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!stderr.contains("panicked") && !text.contains("panicked"), "try {i}: {stderr}{text}");
        check_summary(i, &text, dprobe);
        // The command, if it was started, ran to its end and found every result right.
        let commands: Vec<_> = ended.iter().filter(|e| e.name == "target").collect();
        assert!(commands.len() <= 1, "try {i}: {ended:?}");
        if let Some(c) = commands.first() {
            reached[moment as usize] += 1;
            assert_eq!(c.code(), Some(0), "try {i} ({moment:?}): the command ended with {c:?}\n{text}");
        } else {
            // Ended before the kill: dprobe saw its end, and its summary says how.
            let seen_by_dprobe = text.contains("exited with status 0");
            assert!(!was_started || seen_by_dprobe, "try {i}: the command was started, never seen ending: {ended:?}");
        }
    }
    eprintln!("commands started (startup, placing, steady): {reached:?} of {TRIES}; killed while loading the agent: {loading}");
    assert!(reached[Moment::Steady as usize] > 0, "no kill came while the command was traced");
    assert!(engine != "agent" || loading > 0, "no kill came while the agent was being loaded");
}

/// The one death the holder cannot outlive is its own. While it loads the agent into a
/// command it started, a thread of the command is in the middle of a call dprobe made (its
/// registers dprobe's, its return address a trap): let go then, the command would run half
/// of that call and crash on its return. So from its first instruction until it is let go
/// at its entry, the command dies with its tracer (it never ran a line of its own); once let
/// go, it runs to its end. Never a crash, never a command left stopped.
#[test]
fn kill_9_of_the_holder_loading_its_agent_kills_the_started_command_never_crashes_it() {
    become_subreaper();
    let command = [target(), "threads", "4", "20000"];
    let mut moments = Moments::new();
    let (mut loading, mut killed) = (0, 0);
    for i in 0..TRIES {
        let out = out_file(&format!("killed-holder-{i}"));
        let err = out_file(&format!("killed-holder-{i}.err"));
        let mut args = vec!["--engine", "agent", "probed", "--"];
        args.extend_from_slice(&command);
        let dprobe = start_dprobe(&args, &out, &err);
        wait_until("the command", || started_command(dprobe).is_some());
        // Half the kills as the command appears (before or at its `execve`), half in the load.
        if i % 2 == 1 {
            std::thread::sleep(moments.below(Duration::from_millis(60)));
        }
        let holder = common::holder(dprobe).expect("the holder");
        if started_command(dprobe).is_some_and(|c| traced(c) && !agent_loaded(c)) {
            loading += 1;
        }
        // SAFETY: kills the holder of the dprobe this test started.
        assert_eq!(unsafe { libc::kill(holder as i32, libc::SIGKILL) }, 0);
        // (The command may not have executed yet: then it ends, named as dprobe, untouched.)
        for how in kill_and_reap(dprobe).iter().filter(|e| e.name == "target") {
            if how.signal() == Some(libc::SIGKILL) {
                killed += 1;
            } else {
                assert_eq!(how.code(), Some(0), "try {i}: the command ended with {how:?}");
            }
        }
    }
    eprintln!("kills during the load: {loading} of {TRIES}; commands killed with the holder: {killed}");
    assert!(loading > 0, "no kill came while the agent was being loaded");
}
