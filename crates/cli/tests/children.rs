//! `dprobe trace` of programs that make children: `system()`, `posix_spawn`, `vfork`, `fork`.
//! The program checks its own sums and its children's exit statuses (exit 0: all right).
mod common;

use common::{family, hits, not_seen, returns, trace};

#[test]
fn system_posix_spawn_and_vfork_keep_every_call_counted() {
    for (mode, calls) in [("system", 100), ("spawn", 100), ("vfork", 100)] {
        let (code, out) = trace(mode, &["--count", "work", "--", family(), mode, "100"]);
        assert_eq!(code, Some(0), "{mode}: the program and its children ran right\n{out}");
        // A vfork child calls work once more, in the program's memory.
        let children = if mode == "vfork" { calls } else { 0 };
        assert_eq!(hits(&out, "work"), calls + children, "{mode}\n{out}");
    }
}

/// A `posix_spawn` child runs in the program's memory until its `exec`: its `execve` never
/// returns, and the next child's calls, made on the same words of a stack at the same place,
/// are not that call's return (the agent once returned it at the next child's `sigaction`).
#[test]
fn an_execve_entered_in_a_spawned_child_never_returns() {
    for engine in ["agent", "ptrace"] {
        let probe = "libc:execve%return";
        let (code, out) = trace(
            &format!("spawn-execve-{engine}"),
            &["--engine", engine, "--count", probe, "--", family(), "spawn", "4"],
        );
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let figures = (hits(&out, probe), returns(&out, probe), not_seen(&out, probe));
        assert_eq!(figures, (4, 0, 4), "{engine}: four calls, none returned\n{out}");
    }
}

#[test]
fn a_fork_child_runs_untraced_and_right() {
    let args = ["--no-follow", "--count", "work", "forker%return", "--", family(), "fork", "30", "40"];
    let (code, out) = trace("fork", &args);
    assert_eq!(code, Some(0), "the child's own sum was right\n{out}");
    assert_eq!((hits(&out, "work"), hits(&out, "forker%return")), (30, 1), "{out}");
}

/// The COUNT of `key` in the table of `probe` split by pid.
fn by_pid(out: &str, probe: &str) -> Vec<(i32, u64)> {
    let table = out.split(&format!("@hits of {probe} by pid:")).nth(1).unwrap_or_else(|| panic!("no table\n{out}"));
    table
        .lines()
        .skip(2)
        .map_while(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn followed_fork_children_are_counted_with_their_pids() {
    let (code, out) = trace(
        "follow-fork",
        &["--follow", "--count", "--by", "pid", "work", "forker%return", "--", family(), "fork", "30", "40"],
    );
    assert_eq!(code, Some(0), "{out}");
    let mut pids = by_pid(&out, "work");
    pids.sort_by_key(|p| p.1);
    assert_eq!(pids.iter().map(|p| p.1).collect::<Vec<_>>(), [30, 40], "the program's and its child's\n{out}");
    assert_ne!(pids[0].0, pids[1].0);
    assert_eq!(hits(&out, "work"), 70, "{out}");
}

/// Children are followed by default, by either engine: the agent is loaded into each program a
/// child executes (here the shell's three, and what their own children execute).
#[test]
fn a_shell_and_its_three_children_followed() {
    let script = format!("{f} spawn 3; {f} vfork 4; {f} fork 2 3", f = family());
    let probe = "family:work";
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "--by", "pid", probe, "--", "/bin/sh", "-c", &script];
        let (code, out) = trace(&format!("follow-sh-{engine}"), &args);
        assert_eq!(code, Some(0), "{out}");
        // 3; 4 and their 4 vfork children's; 2 and the fork child's 3.
        assert_eq!(hits(&out, probe), 16, "{engine}\n{out}");
        assert!(!out.contains("never loaded"), "placed in the children\n{out}");
        assert!(!out.contains("ran untraced"), "every child followed\n{out}");
        let mut pids = by_pid(&out, probe);
        pids.sort_by_key(|p| p.1);
        // The vfork children count in their parent's memory, with their own pids.
        assert!(pids.len() >= 4, "each program's own pid\n{out}");
    }
    let (code, out) = trace("unfollowed-sh", &["--no-follow", "--count", probe, "--", "/bin/sh", "-c", &script]);
    assert_eq!((code, hits(&out, probe)), (Some(0), 0), "with --no-follow the children run untraced\n{out}");
}

/// Children that ran untraced are counted in the summary, with how to trace them: a shell's
/// three (forks), and the programs a program's `posix_spawn` and `system()` children execute,
/// under both engines with `--no-follow`; by default none is left out and none is counted.
#[test]
fn the_summary_counts_the_children_that_ran_untraced() {
    let script = format!("{f} spawn 3; {f} vfork 4; {f} fork 2 3", f = family());
    let untraced = |n: u32| format!("{n} child processes ran untraced (without --no-follow they are traced)");
    for engine in ["agent", "ptrace"] {
        let args = ["--no-follow", "--engine", engine, "--count", "family:work", "--", "/bin/sh", "-c", &script];
        let (code, out) = trace(&format!("untraced-sh-{engine}"), &args);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(&untraced(3)), "{engine}: the shell's three children\n{out}");
        for (mode, n) in [("spawn", 5), ("system", 4)] {
            let args = ["--no-follow", "--engine", engine, "--count", "work", "--", family(), mode, &n.to_string()];
            let (code, out) = trace(&format!("untraced-{mode}-{engine}"), &args);
            assert_eq!((code, hits(&out, "work")), (Some(0), n.into()), "{out}");
            assert!(out.contains(&untraced(n)), "{engine}: {mode}'s programs\n{out}");
        }
    }
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "work", "--", family(), "system", "4"];
        let (code, out) = trace(&format!("untraced-none-{engine}"), &args);
        // The program's 4, and 4 in each child's `family` (`system` runs `sh -c 'family ...'`).
        assert_eq!(code, Some(0), "{out}");
        assert!(!out.contains("ran untraced"), "{engine}: every child followed\n{out}");
    }
}

#[test]
fn a_program_executed_by_the_program_is_probed_and_its_child_followed() {
    // work 5 times, then the same program again: work 6 times in it, 6 in its fork child.
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "work", "--", family(), "exec", "5", "6"];
        let (code, out) = trace(&format!("follow-exec-{engine}"), &args);
        assert_eq!((code, hits(&out, "work")), (Some(0), 17), "{engine}\n{out}");
    }
    let (code, out) = trace("exec", &["--no-follow", "--count", "work", "--", family(), "exec", "5", "6"]);
    assert_eq!((code, hits(&out, "work")), (Some(0), 11), "the process's exec is followed, not its child\n{out}");
}

/// The agent follows the process's exec: loaded again into the new program, which counts
/// on into the same summary.
#[test]
fn the_agent_follows_the_program_s_exec() {
    let args = ["--no-follow", "--engine", "agent", "--count", "work", "--", family(), "exec", "5", "6"];
    let (code, out) = trace("agent-exec", &args);
    assert_eq!((code, hits(&out, "work")), (Some(0), 11), "{out}");
    assert!(!out.contains("not traced"), "{out}");
}

/// The rows of the table of `probe` split by comm: (name, count).
fn by_comm(out: &str, probe: &str) -> Vec<(String, u64)> {
    let table = out.split(&format!("@hits of {probe} by comm:")).nth(1).unwrap_or_else(|| panic!("no table\n{out}"));
    table
        .lines()
        .skip(2)
        .map_while(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// A thread's name is the program's it executes (the kernel renames it at the `exec`): the
/// calls a shell's child makes once it runs `ls` are `ls`'s, in a followed child and in the
/// traced process itself.
#[test]
fn events_after_an_exec_carry_the_new_program_s_name() {
    for engine in ["agent", "ptrace"] {
        for (follow, script) in [("--follow", "ls >/dev/null; true"), ("--no-follow", "exec ls >/dev/null")] {
            let args = ["--engine", engine, follow, "--count", "--by", "comm", "libc:malloc", "--", "sh", "-c", script];
            let (code, out) = trace(&format!("comm-after-exec-{engine}"), &args);
            assert_eq!(code, Some(0), "{engine} {script}\n{out}");
            let names: Vec<String> = by_comm(&out, "libc:malloc").into_iter().map(|(name, _)| name).collect();
            assert!(names.contains(&"ls".into()) && names.contains(&"sh".into()), "{engine} {script}\n{out}");
        }
        let args = ["--engine", engine, "--json", "libc:malloc", "--", "sh", "-c", "exec ls >/dev/null"];
        let (code, out) = trace(&format!("comm-after-exec-json-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let last = out.lines().rfind(|l| l.starts_with('{')).expect("events");
        let last: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["comm"], "ls", "{engine}: the last calls are ls's\n{out}");
    }
}

/// A thread that renames itself (`prctl(PR_SET_NAME)`, as `pthread_setname_np` does) is
/// named by its new name in the events after it, with either engine (the ptrace engine kept
/// the name it first read).
#[test]
fn events_after_a_thread_renames_itself_carry_its_new_name() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/renames.c");
    let program = dprobe_test_fixtures::c_program(src, "renames", &["-O2"]);
    let probe = format!("{program}:work");
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", "--by", "comm", &probe, "--", program];
        let (code, out) = trace(&format!("renamed-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let mut rows = by_comm(&out, &probe);
        rows.sort();
        assert_eq!(rows, [("after-rename".into(), 3), ("before-rename".into(), 3)], "{engine}\n{out}");
    }
}

#[test]
fn a_followed_child_that_outlives_the_traced_shell_is_let_go_and_finishes_right() {
    // The shell exits at once; its background child, caught anywhere between its fork and
    // its work, is let go when the trace ends. Its output comes through dprobe's standard
    // output, which stays open until it ends.
    for round in 0..5 {
        let out = common::out_file(&format!("follow-background-{round}"));
        let script = format!("{} threads-system 300000 20 &", family());
        let args = [
            "trace",
            "-o",
            out.to_str().unwrap(),
            "--follow",
            "--count",
            "family:work",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ];
        let o = common::dprobe(&args);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "right 134999850000\n", "round {round}");
    }
}

/// `forks_inside` (see fixtures/forks_inside.c): a function that forks inside itself.
fn forks_inside() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forks_inside.c");
    dprobe_test_fixtures::c_program(src, "forks_inside", &["-O2"])
}

/// The return events of `out`: (pid, value), in order.
fn returns_of(out: &str) -> Vec<(i32, &str)> {
    out.lines()
        .filter_map(|l| {
            let (who, value) = l.split_once(" returns ")?;
            let pid = who.split_once("' (")?.1.split_once(')')?.0.parse().ok()?;
            Some((pid, value))
        })
        .collect()
}

#[test]
fn a_followed_fork_child_returns_from_the_function_that_forked_it() {
    // Returns watched at the function's exits, and through the return address (an indirect
    // jump leaves `spawn_then_jump`), each with and without an argument to fetch.
    let cases = [("spawn_and_return", "", ("11", "12")), ("spawn_then_jump", "jump", ("13", "14"))];
    for (function, mode, (child, parent)) in cases {
        for fetch in ["", " x=$arg1"] {
            let spec = format!("{function}%return{fetch}");
            let mut args = vec!["--follow", &spec, "--", forks_inside()];
            args.extend((!mode.is_empty()).then_some(mode));
            let (code, out) = trace("fork-inside", &args);
            assert_eq!(code, Some(0), "both processes got their own results\n{out}");
            // One call, two returns: the child's first (the parent waits for it), each with
            // its own pid.
            let returns = returns_of(&out);
            assert_eq!(returns.len(), 2, "{spec}\n{out}");
            assert_eq!((returns[0].1, returns[1].1), (child, parent), "{spec}\n{out}");
            assert_ne!(returns[0].0, returns[1].0, "each from its own process\n{out}");
            let line = out.lines().find(|l| l.starts_with(&format!("{function}%return"))).unwrap();
            assert_eq!(line.split_whitespace().skip(1).take(3).collect::<Vec<_>>(), ["1", "2", "0"], "{out}");
            let through_address = out.contains("returns watched through the return address");
            assert_eq!(through_address, mode == "jump", "{out}");
        }
    }
}

/// A `posix_spawn` child runs its file actions (here `dup2`) in the program's memory with every
/// signal blocked and its handlers reset: an agent's probe on `int3` there killed it with
/// `SIGTRAP` at each hit (no command ran). Now each child's hit is counted and its command runs.
#[test]
fn the_agent_counts_int3_hits_of_posix_spawn_children_that_run_on() {
    // `dup2`'s `jae` (glibc 2.36) branches to the instruction after the `ret` that follows it,
    // inside a jump's five bytes: the probe stays on `int3`.
    let probe = "libc:dup2+13";
    let args = ["--engine", "agent", "-v", "--count", probe, "--", family(), "spawn-dup", "50"];
    let t = common::trace_to_file("agent-spawn-dup", &args);
    assert!(t.stderr.contains(&format!("`{probe}`: on int3")), "the probe is on int3: {}", t.stderr);
    assert_eq!(t.code, Some(0), "{}", t.what("agent spawn-dup"));
    assert!(t.stdout.contains("right"), "{}", t.what("agent spawn-dup"));
    assert_eq!(hits(&t.trace, probe), 50, "{}", t.trace);
}

/// A child that runs in the program's memory until its `exec` (`vfork`, and the children of
/// `posix_spawn` and `system`) runs on the thread that made it: the agent found that thread's
/// ids and gave them to the child's hits. Each child's hits carry its own pid, in each engine.
#[test]
fn hits_of_children_sharing_the_program_s_memory_carry_the_child_s_pid() {
    for engine in ["agent", "ptrace"] {
        for mode in ["vfork", "spawn", "system"] {
            // In a vfork child the child's call of `work`; in the others the child's `execve`.
            let probe = if mode == "vfork" { "work" } else { "libc:execve" };
            // Probes inside posix_spawn too (before and after its child), which must not end
            // the loan of the thread to the child.
            let inside = ["libc:posix_spawn", "libc:mmap", "libc:munmap"];
            let mut args = vec!["--engine", engine, "--count", "--by", "pid", "work", "libc:execve"];
            args.extend_from_slice(&inside);
            args.extend_from_slice(&["--", family(), mode, "10"]);
            let t = common::trace_to_file("children-pids", &args);
            assert_eq!(t.code, Some(0), "{}", t.what(&format!("{engine} {mode}")));
            let program = by_pid(&t.trace, "work").into_iter().find(|p| p.1 == 10).map(|p| p.0);
            let children = by_pid(&t.trace, probe).into_iter().filter(|&(pid, n)| Some(pid) != program && n == 1);
            let mut pids: Vec<i32> = children.map(|p| p.0).collect();
            pids.dedup();
            assert!(program.is_some(), "{engine} {mode}: the program's 10 calls\n{}", t.trace);
            assert_eq!(pids.len(), 10, "{engine} {mode}: one hit for each child, under its pid\n{}", t.trace);
        }
    }
}

/// A process dprobe attached to (`-p`) has the programs its children execute followed too: a
/// shell waiting for a line, then running `family` twice (each program's calls of `work`
/// counted, exactly, with none of its children untraced), finishes with its own status. Under
/// the agent the shell's children ask before their `exec` as a started program's do.
#[test]
fn the_programs_an_attached_process_s_children_execute_are_followed() {
    use common::rounds::Tracing;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let f = family();
    let script = format!("read line && {f} spawn 2 && {f} fork 2 3");
    for engine in ["agent", "ptrace"] {
        let mut shell = Command::new("/bin/sh").args(["-c", &script]).stdin(Stdio::piped()).spawn().unwrap();
        let pid = shell.id().to_string();
        let name = format!("attached-children-{engine}");
        let tracing = Tracing::start(&name, &["--engine", engine, "-c", "family:work", "-p", &pid]);
        writeln!(shell.stdin.take().unwrap(), "go").unwrap();
        let status = shell.wait().unwrap();
        // dprobe ends with the process it traced.
        let (code, trace, said) = tracing.end();
        assert_eq!(code, Some(0), "{engine}: {said}");
        let what = format!("{engine}: {said}\n{trace}");
        assert_eq!(status.code(), Some(0), "{what}");
        // Two calls in the first program, two in the second and three in its fork.
        assert_eq!(hits(&trace, "family:work"), 7, "{what}");
        assert!(!trace.contains("untraced"), "{what}");
    }
}

/// Children followed (the default) under the agent: a `kill -9` of dprobe at moments spread
/// over a shell's run (while an agent is loaded into a program a child executed, while a child
/// is watched for its `exec`, in between) lets the shell and every child finish right: the
/// process that traces for dprobe stops every descendant's agent and lets every watched child
/// go.
#[test]
fn kill_9_of_dprobe_following_a_shells_children_lets_every_child_finish_right() {
    use killing::{become_subreaper, kill_and_reap, start_dprobe, Moments};
    become_subreaper();
    let f = family();
    let script = format!("for i in 1 2 3 4; do {f} spawn 2 && {f} fork 2 3 && {f} system 2 || exit 9; done");
    let mut moments = Moments::new();
    let mut followed = 0;
    for i in 0..8 {
        let out = common::out_file(&format!("killed-following-{i}"));
        let err = common::out_file(&format!("killed-following-{i}.err"));
        let args = ["--engine", "agent", "--count", "family:work", "--", "/bin/sh", "-c", &script];
        let dprobe = start_dprobe(&args, &out, &err);
        std::thread::sleep(moments.below(std::time::Duration::from_millis(1500)));
        let shell = common::started_command(dprobe);
        followed += u32::from(agents_in_families(dprobe) > 0);
        let ended = kill_and_reap(dprobe);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        // No process killed (but dprobe); the shell, which stops at the first child that finds
        // a result wrong, ended with 0 (or before the kill, as dprobe says).
        for e in ended.iter().filter(|e| e.name == "sh" || e.name == "family") {
            assert_eq!(e.signal(), None, "try {i}: {e:?} (every process: {ended:?})\n{text}");
        }
        match ended.iter().find(|e| Some(e.pid) == shell) {
            Some(sh) => assert_eq!(sh.code(), Some(0), "try {i}: the shell: {sh:?}\n{text}"),
            None => assert!(shell.is_none() || text.contains("exited with status 0"), "try {i}: {ended:?}\n{text}"),
        }
    }
    eprintln!("kills while a child's program had its own agent: {followed} of 8");
}

/// The same with the shell attached to (`-p`), its children's programs followed: after each
/// `kill -9` of dprobe the shell (the test's child) runs on and ends with 0, every child of
/// its right.
#[test]
fn kill_9_of_dprobe_following_an_attached_shells_children_lets_every_child_finish_right() {
    use killing::{become_subreaper, kill_and_reap, start_dprobe_tracing, Moments};
    use std::io::Write;
    use std::process::{Command, Stdio};
    // (dprobe's holder, orphaned, is then waited for here: its end is part of the try.)
    become_subreaper();
    let f = family();
    let script = format!("read line; for i in 1 2 3; do {f} spawn 2 && {f} fork 2 3 && {f} system 2 || exit 9; done");
    let mut moments = Moments::new();
    for i in 0..6 {
        let mut shell = Command::new("/bin/sh").args(["-c", &script]).stdin(Stdio::piped()).spawn().unwrap();
        let pid = shell.id().to_string();
        let out = common::out_file(&format!("killed-following-attached-{i}"));
        let err = common::out_file(&format!("killed-following-attached-{i}.err"));
        // (Once the attach is over: a shell that runs meanwhile can end before the agent has
        // started.)
        let dprobe = start_dprobe_tracing(&["--engine", "agent", "--count", "family:work", "-p", &pid], &out, &err);
        writeln!(shell.stdin.take().unwrap(), "go").unwrap();
        std::thread::sleep(moments.below(std::time::Duration::from_millis(1500)));
        let ended = kill_and_reap(dprobe);
        let status = shell.wait().unwrap();
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "try {i}: the shell: {status:?} (dprobe's processes: {ended:?})\n{text}");
    }
}

#[path = "common/killing.rs"]
mod killing;

/// How many `family` processes of dprobe's process group have the agent loaded.
fn agents_in_families(group: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let pgrp = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok());
            let maps = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            pgrp == Some(group) && stat.contains("(family)") && maps().contains("dprobe-agent")
        })
        .count()
}

/// Forty children executing a program at the same moment, more than the agent's gates for
/// children asking at once (16): each waits for a gate, none runs untraced, and every call in
/// every new program is counted. The ptrace engine alike.
#[test]
fn forty_children_executing_at_once_are_all_followed() {
    let probe = "family:work";
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", probe, "--", family(), "exec-at-once", "40", "3"];
        let (code, out) = trace(&format!("exec-at-once-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}: every child ran right\n{out}");
        assert!(!out.contains("untraced"), "{engine}: every child followed\n{out}");
        assert_eq!(hits(&out, probe), 40 * 3, "{engine}\n{out}");
    }
}

/// A child whose parent ends at once (`setsid -f` forks it and exits) asks before its `exec`
/// while the trace ends: no one will answer, and it goes on at once, untraced. It waited out
/// its patience before (2 s), holding dprobe's end as long: its probes waited for it.
#[test]
fn a_child_asking_as_the_trace_ends_goes_on_at_once() {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
    // A trace that waited for the child takes its whole patience every time; one that did not
    // takes a fraction of it, unless the machine stalls: three tries, one under the patience.
    let mut took = Vec::new();
    for round in 0..3 {
        let file = common::out_file(&format!("setsid-child-{round}"));
        let _ = std::fs::remove_file(&file);
        let script = format!("{f} calls 3 > {p}.part && mv {p}.part {p}", f = family(), p = file.display());
        let started = std::time::Instant::now();
        let args = ["--count", "libc:malloc", "--", "setsid", "-f", "sh", "-c", &script];
        let (code, out) = trace(&format!("setsid-child-{round}"), &args);
        assert_eq!(code, Some(0), "{out}");
        took.push(started.elapsed());
        // The child's program ran to its end, untraced.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "right 12\n", "{out}");
        if took[round] < PATIENCE {
            return;
        }
    }
    panic!("dprobe waited for the child each time: {took:?}");
}

/// The agent's own work in a forked child (the thread it starts there, the probes it removes
/// under `--no-follow`) allocates and frees on the child's thread before `fork` returns: none
/// of it is counted as the child's. The C library's counts are the ptrace engine's, which
/// does that work from outside.
#[test]
fn the_agent_s_work_in_a_forked_child_is_not_counted_as_the_child_s() {
    let probes = ["libc:malloc", "libc:free", "libc:pthread_create"];
    for follow in [true, false] {
        let counts = |engine: &str| {
            let mut args = vec!["--engine", engine, "--count"];
            if !follow {
                args.push("--no-follow");
            }
            args.extend(probes);
            args.extend(["--", "sh", "-c", "(:); (:); (:)"]);
            let (code, out) = trace(&format!("own-work-{engine}-{follow}"), &args);
            assert_eq!(code, Some(0), "{engine}\n{out}");
            probes.map(|p| hits(&out, p))
        };
        let (agent, ptrace) = (counts("agent"), counts("ptrace"));
        assert_eq!(agent, ptrace, "follow {follow}: the agent's counts, then ptrace's ({probes:?})");
        assert!(agent[0] > 0 && agent[1] > 0, "{agent:?}");
    }
}

/// A program that executes another never returns from its `execve`: once the trace is over,
/// each such call is said as a return not seen, with the agent as with ptrace (the agent
/// counted them neither returned nor lost).
#[test]
fn calls_that_executed_another_program_are_returns_not_seen() {
    let probe = "libc:execve%return";
    for engine in ["agent", "ptrace"] {
        let args = ["--engine", engine, "--count", probe, "--", "env", "env", "env", "true"];
        let (code, out) = trace(&format!("execs-not-returned-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let figures = (returns(&out, probe) + not_seen(&out, probe), hits(&out, probe));
        assert_eq!(figures.0, figures.1, "{engine}: every call returned or said not seen\n{out}");
        assert!(not_seen(&out, probe) >= 3, "{engine}: the three execs\n{out}");
    }
}

/// A program whose first thread leaves before the others (`pthread_exit`, or the `exit` system
/// call) ends when its last thread does, the agent's aside: it hung for ever under the agent,
/// whose thread waited for dprobe. Its status and output are the untraced ones, every call
/// counted, with either engine.
#[test]
fn a_program_whose_first_thread_leaves_first_ends_with_its_last() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/main_leaves.c");
    let program = dprobe_test_fixtures::c_program(src, "main_leaves", &["-O2", "-pthread"]);
    let probe = format!("{program}:work");
    for how in ["pthread_exit", "sys_exit"] {
        let untraced = std::process::Command::new(program).args([how, "500"]).output().unwrap();
        for engine in ["agent", "ptrace"] {
            let t = common::trace_to_file(
                &format!("main-leaves-{how}-{engine}"),
                &["--engine", engine, "-d", "60s", "--count", &probe, "--", program, how, "500"],
            );
            let what = t.what(&format!("{engine}, {how}"));
            assert!(!t.trace.contains("(SIGTERM)") && !t.trace.contains("60.0 s"), "{what}");
            assert_eq!(t.stdout, String::from_utf8_lossy(&untraced.stdout), "{what}");
            let status = untraced.status.code().unwrap();
            assert!(t.trace.contains(&format!("exited with status {status}")), "{what}");
            assert_eq!(hits(&t.trace, &probe), 500, "{what}");
        }
    }
}

/// A program executed under a seccomp filter of its process's own (inherited across the
/// `exec`) gets no agent: the agent's thread would run under the filter, which here kills the
/// process at a system call the program never makes (the agent's socket). It runs untraced,
/// and dprobe says why; the ptrace engine traces it.
#[test]
fn a_program_executed_under_a_seccomp_filter_gets_no_agent_and_runs_right() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seccomp_exec.c");
    let program = dprobe_test_fixtures::c_program(src, "seccomp_exec", &["-O2"]);
    let probe = format!("{program}:work");
    for engine in ["agent", "ptrace"] {
        let t = common::trace_to_file(
            &format!("seccomp-exec-{engine}"),
            &["--engine", engine, "--count", &probe, "--", program],
        );
        let what = t.what(engine);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "child 9900\n"), "{what}");
        match engine {
            "agent" => assert!(t.trace.contains("runs under a seccomp filter of its own"), "{what}"),
            _ => assert_eq!(hits(&t.trace, &probe), 100, "{what}"),
        }
    }
}

/// A program that binds every thread to a seccomp allow-list (TSYNC) would bind the agent's
/// thread too, and be killed at its next system call (SIGSYS); one that binds its own thread
/// alone, at that thread's 1,025th hit (its hits make system calls too). The agent leaves
/// first, the program goes on untraced and ends right, and dprobe says so. The ptrace engine
/// traces it all. The calls that first ask whether seccomp is there, installing nothing, keep
/// the agent: it counts the 50 calls made before the filter.
#[test]
fn a_program_putting_its_threads_under_a_seccomp_filter_has_the_agent_leave_first() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sandboxes_itself.c");
    let program = dprobe_test_fixtures::c_program(src, "sandboxes_itself", &["-O2"]);
    let probe = format!("{program}:work");
    for mode in ["every", "thread", "thread-raw"] {
        for (engine, calls) in [("agent", 50), ("ptrace", 2050)] {
            let t = common::trace_to_file(
                &format!("sandboxes-itself-{mode}-{engine}"),
                &["--engine", engine, "--count", &probe, "--", program, mode],
            );
            let what = t.what(&format!("{mode}, {engine}"));
            assert_eq!((t.code, t.stdout.as_str()), (Some(0), "sum 4000450\n"), "{what}");
            assert_eq!(hits(&t.trace, &probe), calls, "{what}");
            if engine == "agent" {
                assert!(t.trace.contains("asked to put its threads, or one, under a seccomp filter"), "{what}");
            }
        }
    }
}

/// A child forked by a thread under a seccomp filter of its own (`prctl`: that thread alone,
/// not the agent's) inherits it, and so would its agent thread, started from it: the filter
/// here kills the process at a call the agent's start makes (SIGSYS). The child runs untraced,
/// as untraced; the ptrace engine traces it.
#[test]
fn a_child_forked_under_a_seccomp_filter_gets_no_agent_and_runs_right() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forks_under_a_filter.c");
    let program = dprobe_test_fixtures::c_program(src, "forks_under_a_filter", &["-O2"]);
    let probe = format!("{program}:work");
    for (engine, calls) in [("agent", 0), ("ptrace", 50)] {
        let t = common::trace_to_file(
            &format!("forks-under-a-filter-{engine}"),
            &["--engine", engine, "--count", &probe, "--", program],
        );
        let what = t.what(engine);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "child status 0x300\n"), "{what}");
        assert_eq!(hits(&t.trace, &probe), calls, "{what}");
    }
}
