//! `dprobe trace --system-wide`: the kernel engine from the command line, on this machine's
//! kernel (as root): uprobes in every process, tracepoints, filters in the kernel, clean
//! removal of the kernel events on every exit path.
mod common;
#[path = "common/ending.rs"]
mod ending;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{dprobe, dprobe_command, greet, handlers, hits, line_of, lines_program, out_file, trace, usdt};

/// The tests compare the kernel's event files before and after: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tracefs(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", dprobe_test_fixtures::tracing_dir())).unwrap_or_default()
}

#[test]
fn a_system_wide_probe_sees_every_call_of_a_program_with_its_string() {
    let _x = exclusive();
    let spec = format!("{}:greet name=+0($arg1):string i=$arg2:s64", greet());
    let (code, out) = trace("system-greet", &["-a", &spec, "--", greet(), "dprobe-test", "20"]);
    assert_eq!(code, Some(0), "the command's status\n{out}");
    let calls: Vec<&str> = out.lines().filter(|l| l.contains(" call greet(")).collect();
    assert_eq!(calls.len(), 20, "{out}");
    for (i, l) in calls.iter().enumerate() {
        assert!(l.starts_with("process 'greet' ("), "{l}");
        assert!(l.ends_with(&format!("call greet(name=\"dprobe-test\", i={i})")), "{l}");
    }
    assert_eq!(hits(&out, spec.split_whitespace().next().unwrap()), 20);
    assert!(!tracefs("uprobe_events").contains(greet()), "its events are gone");
}

#[test]
fn return_values_filtered_in_the_kernel_and_latency() {
    let _x = exclusive();
    let target = format!("{}:greet", greet());
    let spec = format!("{target}%return ret=$retval:s32");
    let (code, out) = trace("system-ret", &["-a", &spec, "--filter", "ret < 0", "--", greet(), "x", "70"]);
    assert_eq!(code, Some(0), "{out}");
    // greet returns i % 7 - 3: negative for 30 of the 70 calls. Its returns are watched at
    // its `ret`, where the kernel reads the value and filters.
    let negative = out.lines().filter(|l| l.contains(" greet returns -")).count();
    assert_eq!(negative, 30, "{out}");
    assert!(out.contains("filtered in the kernel: only the events that passed reached dprobe"), "{out}");
    let line = out.lines().find(|l| l.starts_with(&spec[..spec.find(' ').unwrap()])).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[1..3], ["70", "30"], "70 calls, 30 passed\n{out}");
    let (code, out) = trace("system-latency", &["-a", "--latency", &target, "--", greet(), "x", "40"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("@latency of greet (ns):"), "{out}");
    let line = out.lines().find(|l| l.starts_with(&target)).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[1..3], ["40", "40"], "{out}");
}

#[test]
fn tracepoints_with_a_kernel_filter_and_a_command_filter() {
    let _x = exclusive();
    let (code, out) = trace(
        "system-openat",
        &[
            "-a",
            "--comm",
            "cat",
            "tracepoint:syscalls:sys_exit_openat",
            "--filter",
            "ret < 0",
            "--",
            "cat",
            "/no/such/file",
        ],
    );
    assert_eq!(code, Some(1), "cat's status\n{out}");
    let events: Vec<&str> = out.lines().filter(|l| l.starts_with("process '")).collect();
    assert!(!events.is_empty(), "{out}");
    assert!(events.iter().all(|l| l.starts_with("process 'cat' (") && l.contains(" sys_exit_openat(")), "{out}");
    assert!(events.iter().all(|l| l.contains(") returns -")), "only failures passed the kernel's filter\n{out}");
    assert!(events.iter().any(|l| l.ends_with(" returns -2 (ENOENT)")), "ENOENT for the missing file\n{out}");

    let o = dprobe(&["trace", "-v", "--count", "--duration", "300ms", "tracepoint:sched:sched_switch"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("dprobe: engine: kernel (kernel functions or tracepoints are probed)"), "{stderr}");
    let (code, out) = trace("system-sched", &["-a", "--count", "--duration", "300ms", "tracepoint:sched:sched_switch"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(hits(&out, "tracepoint:sched:sched_switch") > 0, "{out}");
    assert!(out.contains("(--duration is over)"), "{out}");
}

#[test]
fn kernel_functions_work_where_the_kernel_has_kprobe_events_and_say_why_not_elsewhere() {
    let _x = exclusive();
    let o = dprobe(&["trace", "-a", "--count", "kernel:do_sys_openat2", "--", "cat", "/etc/hostname"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists() {
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(hits(&stderr, "kernel:do_sys_openat2") > 0, "{stderr}");
    } else {
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("CONFIG_KPROBE_EVENTS"), "{stderr}");
        assert!(stderr.contains("tracepoints") && stderr.contains("still work"), "what works instead: {stderr}");
    }
}

/// Ctrl-C removes the events; so does `kill -9` of dprobe (see system_dprobe_killed.rs). Only
/// the process that traces for dprobe, killed itself, leaves them: the next session removes them.
#[test]
fn ctrl_c_and_sigkill_leave_no_event_behind() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let _x = exclusive();
    let before = tracefs("uprobe_events");
    let spec = format!("{}:greet", greet());
    for signal in [libc::SIGINT, libc::SIGKILL] {
        let mut d = dprobe_command()
            .args(["trace", "-a", "-v", "--count", "-o", out_file("system-signal").to_str().unwrap(), &spec])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its probe is live once it says so, however long that takes on a loaded machine.
        let mut stderr = std::io::BufReader::new(d.stderr.take().unwrap());
        let mut said = String::new();
        while !said.ends_with("dprobe: tracing\n") {
            assert!(stderr.read_line(&mut said).unwrap() > 0, "ended before tracing: {said}");
        }
        let holder = common::holder(d.id()).expect("dprobe's tracing process");
        assert!(tracefs("uprobe_events").contains(&format!("dprobe_{holder}_")), "its event is defined");
        if signal == libc::SIGINT {
            // SAFETY: signals the dprobe we started.
            unsafe { libc::kill(d.id() as i32, signal) };
            let status = d.wait().unwrap();
            assert_eq!(status.code(), Some(0));
            assert_eq!(tracefs("uprobe_events"), before, "removed on Ctrl-C");
        } else {
            // SAFETY: kills the process that traces for the dprobe we started.
            unsafe { libc::kill(holder as i32, signal) };
            let status = d.wait().unwrap();
            let stderr = said + &std::io::read_to_string(stderr).unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL), "dprobe ends as its tracing process did: {stderr}");
            assert!(stderr.contains(&format!("its tracing process {holder} was killed by SIGKILL")), "{stderr}");
            assert!(tracefs("uprobe_events").contains(&format!("dprobe_{holder}_")), "SIGKILL cannot clean up");
            // The next session removes the dead one's events.
            let o = dprobe(&["trace", "-a", "--count", "--duration", "100ms", "tracepoint:sched:sched_switch"]);
            assert_eq!(o.status.code(), Some(0));
            assert_eq!(tracefs("uprobe_events"), before, "removed by the next session");
        }
    }
}

#[test]
fn sigint_at_any_moment_of_startup_leaves_no_event_behind_and_the_program_unharmed() {
    use std::os::unix::process::ExitStatusExt;
    let _x = exclusive();
    let before = tracefs("uprobe_events");
    // A program that runs the probed functions all along (four threads calling `pair`, each
    // inside `until_told`): every try places uprobes in it and takes them out again.
    let program = common::target();
    let mut child =
        ending::Running(Command::new(program).arg("until-usr2").stdin(std::process::Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    while std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let addrs: Vec<u64> = ["pair", "until_told"].iter().map(|f| common::function_addr(pid, f)).collect();
    let code = || -> Vec<Vec<u8>> { addrs.iter().map(|&a| common::read_mem(pid, a, 32)).collect() };
    let code_before = code();
    let specs = [format!("{program}:pair"), format!("{program}:until_told%return")];
    let (mut caught, mut early) = (0, 0);
    // No moment is timed: 100 points every 2 ms from the start, each of which must end the
    // same way (caught: exit 0; or before dprobe caught the stop signals: killed by it,
    // having defined nothing).
    for i in 0..100u64 {
        let mut d = dprobe_command()
            .args(["trace", "-a", "--count", "-o", "/dev/null"])
            .args(&specs)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2 * i));
        // SAFETY: signals the dprobe we started (still our unreaped child).
        assert_eq!(unsafe { libc::kill(d.id() as i32, libc::SIGINT) }, 0);
        let status = ending::wait_while_it_moves(&mut d, Some(pid), &format!("try {i}"));
        let stderr = std::io::read_to_string(d.stderr.take().unwrap()).unwrap();
        match (status.code(), status.signal()) {
            (Some(0), None) => caught += 1,
            (None, Some(libc::SIGINT)) => early += 1,
            other => panic!("try {i}: dprobe ended with {other:?}: {stderr}"),
        }
        assert!(!stderr.contains("panicked"), "try {i}: {stderr}");
        assert_eq!(tracefs("uprobe_events"), before, "try {i}: every event removed");
        assert!(child.0.try_wait().unwrap().is_none(), "try {i}: the program died: {stderr}");
        assert_eq!(code(), code_before, "try {i}: the program's code, byte for byte");
    }
    eprintln!("{caught} caught, {early} before dprobe caught the stop signals");
    assert!(caught > 0, "no SIGINT came after dprobe caught the stop signals ({early} came before)");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn long_and_null_strings_print_as_the_ptrace_engine_prints_them() {
    let _x = exclusive();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/strings.c");
    let prog = dprobe_test_fixtures::c_program(src, "strings", &["-O2"]);
    let spec = format!("{prog}:show s=+0($arg1):string i=$arg2:s64 name=$comm");
    // show("", 0), show(NULL, 1), show(N bytes of 'A', 2), show("short", 3).
    let calls = |name: &str, engine: &[&str], n: &str| -> Vec<String> {
        let mut args = engine.to_vec();
        args.extend_from_slice(&[&spec, "--", prog, n]);
        let (code, out) = trace(name, &args);
        assert_eq!(code, Some(0), "{name}\n{out}");
        out.lines().filter_map(|l| Some(l.split_once(" call ")?.1.to_owned())).collect()
    };
    // Within the kernel's limit for one string (4 KiB), both cut at dprobe's 256 bytes.
    let kernel = calls("system-strings", &["-a"], "3000");
    assert_eq!(
        kernel,
        calls("system-strings-ptrace", &["--engine", "ptrace"], "3000"),
        "the same values, the same way"
    );
    assert_eq!(kernel[2], format!("show(s=\"{}\"..., i=2, name=\"strings\")", "A".repeat(256)));
    let kernel = calls("system-strings", &["-a"], "10000000");
    let ptrace = calls("system-strings-ptrace", &["--engine", "ptrace"], "10000000");
    assert_eq!(kernel.len(), 4, "{kernel:?}");
    assert_eq!(kernel[0], "show(s=\"\", i=0, name=\"strings\")", "empty");
    assert_eq!(kernel[1], "show(s=(fault), i=1, name=\"strings\")", "NULL");
    // Cut, with the marker, where each engine's limit is (ptrace: dprobe's 256 bytes; the
    // kernel: the room its record has left, as it keeps no room for a string past its own
    // limit), and the thread's name after it whole.
    let cut = |call: &str| -> usize {
        let a = call.strip_prefix("show(s=\"").and_then(|l| l.strip_suffix("\"..., i=2, name=\"strings\")"));
        assert!(a.is_some_and(|a| a.bytes().all(|c| c == b'A')), "10 MB, cut: {call}");
        a.unwrap().len()
    };
    assert_eq!(cut(&ptrace[2]), 256);
    assert!(cut(&kernel[2]) <= 256, "{}", kernel[2]);
    for i in [0, 1, 3] {
        assert_eq!(kernel[i], ptrace[i], "the same values, the same way");
    }
    assert_eq!(kernel[3], "show(s=\"short\", i=3, name=\"strings\")");
}

#[test]
fn a_cpp_operator_plus_by_name_and_by_address_system_wide() {
    let _x = exclusive();
    let prog = common::operators();
    let f = dprobe_sym::Symbols::load_file(prog).unwrap().find("operator+").unwrap().clone();
    let (by_name, by_address) = (format!("{prog}:operator+"), format!("{prog}:{:#x}", f.start.0));
    let (code, out) = trace("system-operator-plus", &["-a", "-c", &by_name, &by_address, "--", prog, "1000"]);
    assert_eq!(code, Some(0), "the program added correctly\n{out}");
    assert_eq!(hits(&out, &by_name), 1000, "{out}");
    assert_eq!(hits(&out, &by_address), 1000, "{out}");
    assert!(!tracefs("uprobe_events").contains(prog), "its events are gone");
}

#[test]
fn what_the_kernel_engine_cannot_do_is_said() {
    let cases: &[(&[&str], &str)] = &[
        (&["-a", "libc:open%return a=$arg1"], "$arg1 at a return"),
        (&["-a", "libc:open%return e=$errno"], "cannot read a thread's C errno"),
        (&["-a", "greet"], "a system-wide probe needs BINARY:FUNCTION"),
        (&["-a", "libnosuchlib:f"], "`libnosuchlib`: no such file"),
        (&["--engine", "ptrace", "tracepoint:sched:sched_switch", "--", "true"], "need the kernel engine, not ptrace"),
        (&["--engine", "ptrace", "-a", "libc:open"], "--system-wide needs the kernel engine"),
        (&["-a", "tracepoint:sched:no_such_event"], "event `sched:no_such_event`: the kernel has no such event"),
        (&["-a", "tracepoint:sched:sched_switch", "--hist", "nope"], "--hist nope: no probe fetches"),
        (&["--comm", "cat", "libc:open", "--", "true"], "--comm filters system-wide traces"),
    ];
    common::assert_refused(cases);
}

#[test]
fn instructions_the_kernel_would_refuse_are_refused_before_placing_with_the_reason() {
    let _x = exclusive();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/refused.c");
    let program = dprobe_test_fixtures::c_program(src, "refused", &["-O2"]);
    let mut cases = vec![
        ("vex_first", "VEX/EVEX-encoded"),
        ("lock_first", "`lock`-prefixed"),
        ("vpcmpeqb_first", "(opcode 0x74) for a conditional jump and skip it"),
        ("evex_broadcast_first", "(opcode 0x7a) for a conditional jump and skip it"),
    ];
    if dprobe_kernel::kernel_optimizes_nop5() {
        cases.push(("red_zone_nop+4", "red zone"));
    }
    for (place, why) in cases {
        let spec = format!("{program}:{place}");
        let o = dprobe(&["trace", "-a", "--count", &spec, "--", program]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{place}: refused, not 0 hits\n{stderr}");
        assert!(stderr.contains(why), "{place}: {stderr}");
        assert!(!tracefs("uprobe_events").contains(program), "{place}: nothing placed");
    }
}

#[test]
fn a_glob_leaves_out_what_the_kernel_would_mishandle_and_the_program_computes_as_untraced() {
    let _x = exclusive();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/refused.c");
    let program = dprobe_test_fixtures::c_program(src, "refused", &["-O2"]);
    let untraced = Command::new(program).status().unwrap();
    assert_eq!(untraced.code(), Some(0), "the program checks its own result");
    // The kernel would skip `vpcmpeqb_first`'s first instruction (taken for a `je`): the
    // program would then compute 0 instead of all ones and exit with 1.
    let t = common::trace_to_file("system-mishandled", &["-a", "-c", &format!("{program}:*"), "--", program]);
    assert_eq!(t.code, Some(0), "{}", t.what("system-mishandled"));
    assert!(t.trace.contains("exited with status 0"), "{}", t.trace);
    for (left_out, why) in [
        ("vpcmpeqb_first", "(opcode 0x74) for a conditional jump and skip it"),
        ("evex_broadcast_first", "(opcode 0x7a) for a conditional jump and skip it"),
        ("fma_first", "(opcode 0x9d) for popf"),
    ] {
        let line = format!(
            "  {left_out}: not by the kernel engine: the kernel would take this VEX/EVEX-encoded instruction {why}"
        );
        assert!(t.stderr.contains(&line), "{left_out}: {}", t.stderr);
    }
    assert_eq!(hits(&t.trace, &format!("{program}:plain")), 1, "{}", t.trace);
    assert_eq!(hits(&t.trace, &format!("{program}:kmov_second")), 0, "its first instruction is kept: {}", t.trace);
    assert!(!tracefs("uprobe_events").contains(program), "every event removed");
}

#[test]
fn counts_are_of_the_traced_threads_only_with_the_reason_for_any_gap() {
    let _x = exclusive();
    let target = format!("{}:greet", greet());
    // (options, calls by the command, expected HITS)
    let cases: &[(&[&str], &str, u64)] =
        &[(&["--comm", "greet"], "30", 30), (&["--comm", "nosuchcomm"], "30", 0), (&[], "25", 25)];
    for (options, calls, expected) in cases {
        let mut args = vec!["-a", "-c"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[&target, "--", greet(), "x", calls]);
        let (code, out) = trace("system-counts", &args);
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(hits(&out, &target), *expected, "{options:?}\n{out}");
        if options.contains(&"nosuchcomm") {
            assert!(
                out.contains("HITS counts of threads named nosuchcomm received; the kernel counted 30 hits"),
                "{out}"
            );
        }
        assert!(!out.contains("buffers were full"), "no loss to speak of: {out}");
    }
}

/// A `usdt serve` program: each line sent runs one round, whose printed line says whether the
/// semaphore of `app:req` was set (`sem=1`: the probe fired).
struct Server {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(prog: &str) -> Server {
        use std::process::Stdio;
        let mut child = Command::new(prog).arg("serve").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        Server { child, input, output: std::io::BufReader::new(output) }
    }

    /// Run one round: its id, and whether `app:req` fired in it.
    fn round(&mut self) -> (String, bool) {
        use std::io::{BufRead, Write};
        writeln!(self.input, "go").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let id = line.split_whitespace().find_map(|w| w.strip_prefix("id=")).expect("id=").to_owned();
        (id, line.trim_end().ends_with(" sem=1"))
    }

    fn finish(self) {
        let Server { mut child, input, .. } = self;
        drop(input);
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn a_pid_counts_that_process_alone_while_another_calls_the_same_function() {
    let _x = exclusive();
    let prog = usdt("-O2");
    let (mut traced, mut other) = (Server::start(prog), Server::start(prog));
    let out = out_file("system-pid-counts");
    let pid = traced.child.id().to_string();
    let label = format!("usdt:{prog}:app:req");
    let spec = format!("{label} id=$arg1");
    let mut d = dprobe_command().args(["trace", "-a", "-o", out.to_str().unwrap(), "-p", &pid, &spec]).spawn().unwrap();
    let events = || -> Vec<String> {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.lines().filter(|l| l.contains(" call app:req(")).map(str::to_owned).collect()
    };
    // Rounds until one's event comes: from then on every round's does. (The semaphore is set
    // as soon as the kernel has the probe, a little before dprobe's events are enabled.)
    let mut fired = 0;
    for _ in 0..100_000 {
        fired += u64::from(traced.round().1);
        if !events().is_empty() {
            break;
        }
        assert!(d.try_wait().unwrap().is_none(), "dprobe ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!events().is_empty(), "no event came");
    let (mut others, mut expected) = (0, Vec::new());
    for _ in 0..7 {
        let (id, sem) = traced.round();
        assert!(sem, "the probe stays in place while traced");
        fired += 1;
        expected.push(format!("process 'usdt-O2' ({pid}) call app:req(id={id})"));
        others += u64::from(other.round().1);
    }
    traced.finish();
    // The trace ends with the process, as perf's and bpftrace's do: no signal needed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while d.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended_by_itself = d.try_wait().unwrap().is_some();
    // SAFETY: signals the dprobe we started, if it still runs.
    unsafe { libc::kill(d.id() as i32, libc::SIGINT) };
    assert_eq!(d.wait().unwrap().code(), Some(0));
    other.finish();
    let (summary, events) = (std::fs::read_to_string(&out).unwrap(), events());
    assert!(ended_by_itself, "dprobe went on after process {pid} ended:\n{summary}");
    // How it ended, where the kernel still tells it once the test has reaped it (Linux 6.15).
    let said = ["(the process given with -p exited with status 0)", "(the process given with -p ended)"];
    assert!(said.iter().any(|s| summary.contains(s)), "{summary}");
    for e in &expected {
        assert!(events.iter().any(|l| l.ends_with(e.as_str())), "{e}: every round once tracing:\n{summary}");
    }
    assert!(events.iter().all(|l| l.contains(&format!("({pid}) call"))), "process {pid}'s alone:\n{summary}");
    assert_eq!(hits(&summary, &label), events.len() as u64, "HITS are the events received\n{summary}");
    if others > 0 {
        let kernel = format!("HITS counts of process {pid} received; the kernel counted {} hits", fired + others);
        assert!(summary.contains(&kernel), "the kernel's own figure, named as such\n{summary}");
    }
    assert!(!tracefs("uprobe_events").contains(prog), "its events are gone");
}

#[test]
fn entries_without_a_return_are_said_to_be_so_not_lost_records() {
    let _x = exclusive();
    let (exits, target) = (common::exits(), common::target());
    // (program, its arguments, return probe, HITS, RETURNS): half the calls leave by longjmp
    // or pthread_exit; a recursion 101 deep (deeper than the kernel's return probes watch,
    // 64 per thread) returns all the way, its returns watched at its exits.
    let cases = [
        (exits, ["longjmp", "50"], "jump_on_odd", 50, 25),
        (exits, ["pthread_exit", "50"], "end_thread", 50, 25),
        (target, ["recurse", "100"], "recurse", 101, 101),
    ];
    for (prog, args, function, entries, returns) in cases {
        let spec = format!("{prog}:{function}%return");
        // Paired in dprobe, the calls left are told apart from those still running; counted
        // in the kernel at the exits (BPF), they are not, and the causes are named together.
        for aggregation in ["--no-bpf", "--count"] {
            let mut all = vec!["-a", "--count", &spec, "--", prog, args[0], args[1]];
            if aggregation == "--no-bpf" {
                all.insert(1, aggregation);
            }
            let (code, out) = trace("system-gaps", &all);
            assert_eq!(code, Some(0), "{out}");
            let line = out.lines().find(|l| l.starts_with(&spec)).unwrap_or_else(|| panic!("{out}"));
            let figures: Vec<&str> = line.split_whitespace().skip(1).take(2).collect();
            assert_eq!(figures, [entries.to_string(), returns.to_string()], "{function} {aggregation}\n{out}");
            let gap = entries - returns;
            let told = match aggregation {
                "--no-bpf" => format!(
                    "{gap} returns not seen: longjmp, an exception, their thread exited, a switched context \
                     (swapcontext) or another program executed left the function, or the call had not returned \
                     when tracing ended\n"
                ),
                _ => format!(
                    "{gap} entries (the kernel's count) without a return counted at the exits: they had not returned \
                     when tracing stopped, or were left by longjmp, an exception or their thread's end\n"
                ),
            };
            assert_eq!(out.contains(&told), gap > 0, "{function} {aggregation}: the real causes\n{out}");
            assert!(!out.contains("without a return received"), "{function} {aggregation}: none pending\n{out}");
            assert!(!out.contains("buffers were full") && !out.contains("not received"), "nothing lost\n{out}");
        }
    }
}

#[test]
fn an_output_that_cannot_be_written_ends_the_trace_with_every_event_removed() {
    let _x = exclusive();
    let before = tracefs("uprobe_events");
    let spec = format!("{}:greet", greet());
    for mode in [&[][..], &["--count"][..]] {
        let mut args = vec!["trace", "-a", "-o", "/dev/full"];
        args.extend_from_slice(mode);
        args.extend_from_slice(&[&spec, "--", greet(), "x", "1000"]);
        let o = dprobe(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{mode:?}: {stderr}");
        assert!(stderr.contains("dprobe: cannot write to /dev/full: No space left on device"), "{mode:?}: {stderr}");
        assert_eq!(tracefs("uprobe_events"), before, "{mode:?}: every event removed");
    }
}

#[test]
fn records_lost_to_a_small_buffer_are_counted_and_the_size_named() {
    let _x = exclusive();
    let spec = format!("{}:greet i=$arg2", greet());
    let label = format!("{}:greet", greet());
    let (code, out) = trace("system-buffer", &["-a", "-c", "--buffer-size", "4K", &spec, "--", greet(), "x", "20000"]);
    assert_eq!(code, Some(0), "{out}");
    let lost: u64 = out
        .lines()
        .find_map(|l| l.trim_start().split_once(" records lost: ").map(|(n, _)| n.parse().unwrap()))
        .unwrap_or(0);
    assert_eq!(hits(&out, &label) + lost, 20_000, "every call received or counted as lost\n{out}");
    if lost > 0 {
        let note = "records lost: the kernel's buffers (4 KiB per CPU) were full (it dropped them); a larger \
                    --buffer-size keeps more";
        assert!(out.contains(note), "{out}");
    }
}

#[test]
fn many_probes_are_placed_together_and_the_duration_ends_the_trace() {
    let _x = exclusive();
    let before = tracefs("uprobe_events");
    // libc's XDR functions: many, and called by no program here. A system-wide probe on the
    // string functions every process calls coincided with other programs misbehaving.
    let (code, out) = trace("system-many", &["-a", "-c", "-d", "100ms", "libc:xdr_*"]);
    assert_eq!(code, Some(0), "{out}");
    let rows = out.lines().filter(|l| l.starts_with("libc:xdr_")).count();
    assert!(rows >= 50, "one row per function: {rows}\n{out}");
    assert!(out.contains("(--duration is over)"), "{out}");
    assert_eq!(tracefs("uprobe_events"), before, "every event removed");
    // Defined in one write to the kernel's event file, and removed in one.
    let (written, group) = uprobe_event_writes("system-many", &["-c", "libc:xdr_*"]);
    let of_this = |start: &str| written.iter().filter(|w| w.starts_with(&format!("{start}{group}/"))).count();
    assert_eq!((of_this("p:"), of_this("-:")), (1, 1), "rows: {rows}, writes:\n{written:#?}");
}

/// What `dprobe trace -a -d 100ms -o /dev/null ARGS` wrote to `uprobe_events` (strace's `-y`
/// names the file of each descriptor; a write the kernel refused, EBUSY while it lets go of
/// the events, retried, left aside), and the session's group.
fn uprobe_event_writes(name: &str, args: &[&str]) -> (Vec<String>, String) {
    let log = out_file(&format!("{name}.strace"));
    let o = Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "100000", "-e", "trace=write", "-e", "signal=none", "-o"])
        .arg(&log)
        .args([env!("CARGO_BIN_EXE_dprobe"), "trace", "-a", "-d", "100ms", "-o", "/dev/null"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(&log).unwrap();
    let written: Vec<String> = log
        .lines()
        .filter(|l| !l.contains(") = -1 "))
        .filter_map(|l| l.split_once("uprobe_events>, \"")?.1.split_once('"'))
        .map(|(data, _)| data.to_owned())
        .collect();
    // This session's group, from its definitions (`p:GROUP/NAME ...`); another session's
    // events left by a killed dprobe may be removed too, in a write of their own.
    let group = written.iter().find_map(|w| w.strip_prefix("p:")?.split_once('/')).map(|(g, _)| g.to_owned());
    (written.clone(), group.expect("defined"))
}

#[test]
fn many_probes_whose_records_are_read_are_one_kernel_event_removed_at_once() {
    let _x = exclusive();
    let before = tracefs("uprobe_events");
    // Read as records (no BPF program counts them), the probes of one shape are one kernel
    // event: the kernel lets go of its probes together, where it let go of separate events
    // one at a time, a grace period each.
    let (written, group) = uprobe_event_writes("system-many-records", &["libc:xdr_*"]);
    let definitions: Vec<&str> = written.iter().flat_map(|w| w.split("\\n")).filter(|l| l.starts_with("p:")).collect();
    let names: std::collections::BTreeSet<&str> =
        definitions.iter().filter_map(|l| l.split_whitespace().next()?.strip_prefix(&format!("p:{group}/"))).collect();
    assert!(definitions.len() >= 50, "one probe per function: {definitions:#?}");
    assert_eq!(names.len(), 1, "one kernel event: {definitions:#?}");
    let removals: Vec<&String> = written.iter().filter(|w| w.starts_with(&format!("-:{group}/"))).collect();
    assert_eq!(removals.len(), 1, "removed in one write: {written:#?}");
    assert_eq!(removals[0].split("\\n").filter(|l| !l.is_empty()).count(), 1, "as one event: {removals:#?}");
    assert_eq!(tracefs("uprobe_events"), before, "every probe removed");
    // Each function's hits and returns are its own: f0 called once, ... f4 five times, f5
    // once, entry probes and return probes (watched at the exits) at the same functions.
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/each.c");
    let each = dprobe_test_fixtures::c_program(src, "each", &["-O2"]);
    let (entries, returns) = (format!("{each}:f*"), format!("{each}:f*%return"));
    let (code, out) = trace("system-many-shared", &["-a", "-c", "--no-bpf", &entries, &returns, "--", each]);
    assert_eq!(code, Some(0), "{out}");
    let rows: Vec<Vec<&str>> =
        out.lines().filter(|l| l.starts_with(&format!("{each}:f"))).map(|l| l.split_whitespace().collect()).collect();
    let expected: Vec<Vec<String>> = [1, 2, 3, 4, 5, 1]
        .iter()
        .enumerate()
        .map(|(k, n)| vec![format!("{each}:f{k}"), n.to_string(), "-".into(), "0".into()])
        .chain(
            [1, 2, 3, 4, 5, 1]
                .iter()
                .enumerate()
                .map(|(k, n)| vec![format!("{each}:f{k}"), n.to_string(), n.to_string(), "0".into()]),
        )
        .collect();
    assert_eq!(rows, expected, "{out}");
    assert_eq!(tracefs("uprobe_events"), before, "every probe removed");
}

#[test]
fn a_user_without_root_is_told_tracefs_is_for_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // A copy the other user can run: the build directory may be inside one only its owner
    // can enter (a checkout under a private temporary directory).
    let dir = std::env::temp_dir().join(format!("dprobe-other-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("dprobe");
    std::fs::copy(env!("CARGO_BIN_EXE_dprobe"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(&copy)
        .args(["trace", "-a", "--count", "-d", "100ms", "tracepoint:sched:sched_switch"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tracefs is mounted on /sys/kernel/tracing but only root may use it"), "{stderr}");
}

#[test]
fn static_probes_through_the_kernel_set_their_semaphore_and_carry_their_arguments() {
    let _x = exclusive();
    let prog = usdt("-O2");
    let out = out_file("system-usdt");
    let req = format!("usdt:{prog}:app:req id=$arg1 name=+0($arg2):string delta=$arg3");
    let tick = format!("usdt:{prog}:tick a=$arg1 b=$arg2");
    let o = dprobe(&["trace", "-a", "-o", out.to_str().unwrap(), &req, &tick, "--", prog, "run", "4"]);
    let trace = std::fs::read_to_string(&out).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}\n{trace}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // The kernel raised the semaphore (its reference counter) in the program: every round
    // saw it set and fired the guarded probe.
    let rounds: Vec<&str> = stdout.lines().collect();
    assert_eq!(rounds.len(), 4, "{stdout}");
    for (i, r) in rounds.iter().enumerate() {
        let i = i as i64 + 1;
        assert_eq!(*r, format!("round id={} name=req-{i} delta={} sem=1", i * 10, -i * 1000));
        let req = format!("call app:req(id={}, name=\"req-{i}\", delta={})", i * 10, -i * 1000);
        assert!(trace.contains(&req), "{req} in\n{trace}");
        assert!(trace.contains(&format!("call app:tick(a={}, b={})", -i, i + 200)), "{trace}");
    }
    assert_eq!(hits(&trace, &format!("usdt:{prog}:app:req")), 4, "{trace}");
    assert_eq!(hits(&trace, &format!("usdt:{prog}:app:tick")), 4, "{trace}");
    assert!(!tracefs("uprobe_events").contains(prog), "its events are gone");
}

#[test]
fn a_glob_becomes_one_kernel_event_per_function() {
    let _x = exclusive();
    let prog = handlers();
    let glob = format!("{prog}:handle_*");
    let out = out_file("system-glob");
    let o = dprobe(&["trace", "-a", "--count", "-o", out.to_str().unwrap(), &glob, "--", prog, "5"]);
    let trace = std::fs::read_to_string(&out).unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}\n{trace}");
    assert_eq!(hits(&trace, &format!("{prog}:handle_get")), 5, "{trace}");
    assert_eq!(hits(&trace, &format!("{prog}:handle_put")), 10, "{trace}");
    assert_eq!(hits(&trace, &format!("{prog}:handle_delete")), 1, "{trace}");
    assert!(stderr.contains("  handle_raw: "), "{stderr}");
    assert!(!tracefs("uprobe_events").contains(prog), "its events are gone");
}

#[test]
fn kernel_event_times_are_on_the_monotonic_clock_and_within_the_trace() {
    let _x = exclusive();
    let spec = format!("{}:greet i=$arg2:s64", greet());
    let before = common::wall_now_ns();
    let (code, out) = trace("system-times", &["-a", "--json", &spec, "--", greet(), "x", "10"]);
    let after = common::wall_now_ns();
    assert_eq!(code, Some(0), "{out}");
    let seen = common::check_event_times(&out, before, after);
    assert_eq!(seen.len(), 10, "{out}");
}

#[test]
fn line_probes_and_inlined_copies_are_one_uprobe_per_site() {
    let _x = exclusive();
    for cc in ["gcc", "clang"] {
        let p = lines_program(cc, "-O2");
        let third = format!("{p}:lines.c:{}", line_of("/* THIRD */"));
        let scale = format!("{p}:scale");
        let out = out_file(&format!("system-lines-{cc}"));
        let o = dprobe(&["trace", "-a", "-c", "-o", out.to_str().unwrap(), &third, &scale, "--", p, "20"]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        // The program's own counts: scale ran 39 times, the THIRD line 7 times.
        assert_eq!(String::from_utf8_lossy(&o.stdout), "scale 39\nthird 7\n");
        let summary = std::fs::read_to_string(&out).unwrap();
        assert_eq!(hits(&summary, &third), 7, "{cc}:\n{summary}");
        assert_eq!(hits(&summary, &scale), 39, "{cc}:\n{summary}");
        assert!(summary.contains(&format!("{scale} (4 sites)")), "{summary}");
        assert!(!tracefs("uprobe_events").contains(p), "its events are gone");
    }
}
