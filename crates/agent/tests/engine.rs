//! The agent engine driven directly: what the tracer sends and what comes back, and how the
//! traced process is held and let go.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dprobe_agent::{agent_library, AgentEngine, Library};
use dprobe_core::fetch::FetchPlan;
use dprobe_core::{Engine, ProbeRequest};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn program() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/program.c"), "agent-program", &["-O1", "-pthread"])
}

/// The agent as `dprobe` loads it: its bytes, put in a memory file of the program's.
fn agent() -> Library<'static> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    Library::Image(IMAGE.get_or_init(|| std::fs::read(agent_library().unwrap()).unwrap()))
}

fn hanging_library() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/hang.c"), "libhang.so", &["-O1", "-shared", "-fPIC"])
}

/// The running program; killed if a test fails before it finishes it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn start(args: &[&str]) -> Running {
        Running(Command::new(program()).args(args).stdin(Stdio::null()).spawn().unwrap())
    }

    /// Started with its output read by the test.
    fn start_piped(args: &[&str]) -> Running {
        Running(Command::new(program()).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap())
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Wait until it has a handler for each of `signals` (it installs them before it starts
    /// calling `probed`), however long that takes on a loaded machine.
    fn wait_for_handlers(&self, signals: &[i32]) {
        let caught = || {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).unwrap().trim().to_owned();
            u64::from_str_radix(&mask, 16).unwrap()
        };
        while signals.iter().any(|s| caught() & (1 << (s - 1)) == 0) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ask it to end (SIGUSR2) and return its status: 7 when it ran on as it should.
    fn finish(mut self) -> Option<i32> {
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGUSR2) }, 0);
        self.0.wait().unwrap().code()
    }
}

/// The system call the main thread of `pid` is blocked in, if it is.
fn blocked_in(pid: i32) -> Option<i64> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    line.split_whitespace().next()?.parse().ok().filter(|n| *n >= 0)
}

fn tracer_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("TracerPid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn place(engine: &mut AgentEngine, spec: &str) {
    let spec = dprobe_spec::parse_probe(spec).unwrap();
    let plan = FetchPlan::compile(&spec.args, None);
    engine.place(ProbeRequest { spec: &spec, plan: &plan, timed: false, maxactive: None, semaphore: None }).unwrap();
}

#[test]
fn an_attached_process_runs_untraced_once_the_agent_is_loaded() {
    let child = Running::start(&["wait"]);
    child.wait_for_handlers(&[libc::SIGUSR2]);
    let engine = AgentEngine::attach(child.pid(), agent(), false).unwrap();
    // No thread of it is held by ptrace while the probes are placed: dprobe dying now (even
    // killed) leaves it running.
    assert_eq!(tracer_of(child.pid()), 0, "released before any probe is placed");
    let mut engine = engine;
    place(&mut engine, "probed x=$arg1");
    drop(engine);
    assert_eq!(child.finish(), Some(7));
}

#[test]
fn events_that_fail_the_filter_are_dropped_in_the_probed_thread() {
    let mut engine = AgentEngine::spawn(program(), &["calls", "1000"], agent(), true).unwrap();
    place(&mut engine, "probed x=$arg1");
    let filter = dprobe_spec::parse_filter("x == 3 || x == 700", &["x"]).unwrap();
    engine.prefilter(&filter, "x == 3 || x == 700");
    let mut seen = Vec::new();
    let ending = engine.run(&mut || false, &mut |e| seen.push(e.values.get(0).map(|v| format!("{v:?}")))).unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))");
    assert_eq!(seen.len(), 2, "only the events that pass reach dprobe");
    assert_eq!(seen[0].as_deref(), Some("Int(3, X(64))"));
    assert_eq!(engine.stats(0).hits, 1000, "every hit is counted");
}

/// Events read after a started program ended still find it in `/proc` (what names it in a
/// trace file): it is reaped only once they are read, and then it is.
#[test]
fn a_started_program_is_reaped_only_after_its_last_events_are_read() {
    let mut engine = AgentEngine::spawn(program(), &["calls", "1000"], agent(), true).unwrap();
    place(&mut engine, "probed x=$arg1");
    let (mut events, mut named, mut pid) = (0, 0, 0);
    let ending = engine
        .run(&mut || false, &mut |e| {
            if events == 0 {
                // The program makes its other calls and ends meanwhile.
                std::thread::sleep(Duration::from_millis(300));
            }
            events += 1;
            pid = e.pid;
            named += u32::from(std::fs::read_to_string(format!("/proc/{}/comm", e.pid)).is_ok());
        })
        .unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))");
    assert_eq!((events, named), (1000, 1000), "every event read while /proc showed the program");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "reaped once its events were read");
}

#[test]
fn a_call_that_never_returns_is_abandoned_and_the_process_goes_on() {
    let child = Running::start(&["loader-held", hanging_library()]);
    let pid = child.pid();
    // The loading thread is inside the library's constructor, holding the loader's lock.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().contains("libhang.so") {
        assert!(Instant::now() < deadline, "the library never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(AgentEngine::attach(pid, agent(), false).err().map(|e| e.to_string()));
    });
    // A bound against hanging, not a measure: the call's own limit is a few seconds.
    let error = rx.recv_timeout(Duration::from_secs(60)).expect("the injected dlopen was waited for forever");
    let error = error.expect("loading cannot succeed while the loader's lock is held");
    assert!(error.contains("did not return: its thread did not run"), "{error}");
    assert_eq!(tracer_of(pid), 0, "let go");
    assert_eq!(child.finish(), Some(7), "it goes on as it was");
}

/// Queue SIGRTMIN with `value` for process `pid`.
fn queue_signal(pid: i32, value: i32) {
    let value = libc::sigval { sival_ptr: value as u32 as usize as *mut libc::c_void };
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::sigqueue(pid, libc::SIGRTMIN(), value) }, 0);
}

/// Queue signals for `child` (running `signals`) at random moments, a few hundred
/// microseconds apart, while `now(sent)` says so, until `done` has something, then a burst
/// right after; then ask it how many it received. Returns `(sent, received)` and what `done`
/// had.
fn signals_until<T>(child: Running, done: std::sync::mpsc::Receiver<T>, now: impl Fn(u64) -> bool) -> ((u64, u64), T) {
    use std::io::Read;
    let mut child = child;
    child.wait_for_handlers(&[libc::SIGRTMIN()]);
    let mut random = 0x9e37_79b9_7f4a_7c15u64 ^ child.pid() as u64;
    let mut sent = 0u64;
    // A bound against hanging, not a measure.
    let deadline = Instant::now() + Duration::from_secs(120);
    let outcome = loop {
        match done.try_recv() {
            Ok(outcome) => break outcome,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => panic!("the attaching thread failed"),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        assert!(Instant::now() < deadline, "the attach never returned");
        if !now(sent) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        queue_signal(child.pid(), sent as i32);
        sent += 1;
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_micros(random % 1000));
    };
    // Right as the process is let go.
    for _ in 0..100 {
        queue_signal(child.pid(), sent as i32);
        sent += 1;
    }
    queue_signal(child.pid(), -1);
    let mut report = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut report).unwrap();
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it printed its count and exited: {report:?}");
    ((sent, report.trim().parse().unwrap()), outcome)
}

#[test]
fn signals_queued_while_an_injected_call_is_abandoned_are_each_received_once() {
    let child = Running::start_piped(&["signals", hanging_library()]);
    let pid = child.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().contains("libhang.so") {
        assert!(Instant::now() < deadline, "the library never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let error = AgentEngine::attach(pid, agent(), false).err().map(|e| e.to_string());
        let _ = tx.send((error, tracer_of(pid)));
    });
    // While the injected dlopen waits for the loader's lock (its thread traced, in `futex`):
    // they wait for the thread to be put back, and do not keep the call from being found
    // stuck.
    let in_the_call = |_| tracer_of(pid) != 0 && blocked_in(pid) == Some(libc::SYS_futex);
    let ((sent, received), (error, tracer)) = signals_until(child, rx, in_the_call);
    let error = error.expect("loading cannot succeed while the loader's lock is held");
    assert!(error.contains("did not return: its thread did not run"), "{error}");
    assert_eq!(tracer, 0, "let go");
    assert_eq!(received, sent, "every signal received once");
}

#[test]
fn signals_queued_while_the_agent_is_loaded_and_placing_are_each_received_once() {
    let child = Running::start_piped(&["signals"]);
    let pid = child.pid();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut engine = AgentEngine::attach(pid, agent(), false).unwrap();
        let tracer = tracer_of(pid);
        place(&mut engine, "probed x=$arg1");
        engine.finish(None, &|| false).unwrap();
        let _ = tx.send(tracer);
    });
    let ((sent, received), tracer) = signals_until(child, rx, |_| true);
    assert_eq!(tracer, 0, "let go once the agent is loaded");
    assert_eq!(received, sent, "every signal received once");
}

#[test]
fn a_process_waiting_in_sigsuspend_keeps_its_signal_mask_through_the_load() {
    let child = Running::start(&["suspend"]);
    child.wait_for_handlers(&[libc::SIGUSR2]);
    let pid = child.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocked_in(pid) != Some(libc::SYS_rt_sigsuspend) {
        assert!(Instant::now() < deadline, "it never waited in sigsuspend");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The calls run with its signals blocked; what it blocks outside sigsuspend comes back.
    let mut engine = AgentEngine::attach(pid, agent(), false).unwrap();
    place(&mut engine, "probed x=$arg1");
    engine.finish(None, &|| false).unwrap();
    assert_eq!(child.finish(), Some(7), "woken by SIGUSR2, which it blocks again afterwards");
}

#[test]
fn a_hit_allocates_nothing_even_the_first_in_a_thread() {
    let mut engine = AgentEngine::spawn(program(), &["thread-mallocs"], agent(), true).unwrap();
    place(&mut engine, "probed x=$arg1");
    let mut events = 0;
    let ending = engine.run(&mut || false, &mut |_| events += 1).unwrap();
    // The program's status is the number of allocations its thread made during its probed
    // calls (hits included): the agent's hit path made none.
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))");
    assert_eq!((engine.stats(0).hits, events), (10, 10));
}

#[test]
fn a_hit_that_copies_its_stack_allocates_nothing_either() {
    let mut engine = AgentEngine::spawn(program(), &["thread-mallocs"], agent(), true).unwrap();
    engine.stacks(dprobe_core::StackRequest { user: true, kernel: false, depth: 64 }).unwrap();
    place(&mut engine, "probed x=$arg1");
    let (mut events, mut with_stack) = (0, 0);
    let ending = engine
        .run(&mut || false, &mut |e| {
            events += 1;
            with_stack += usize::from(e.user_stack.len() > 1);
        })
        .unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))");
    assert_eq!((engine.stats(0).hits, events, with_stack), (10, 10, 10));
}

/// The memory files named `dprobe-agent` that process `pid` has open.
fn agent_memory_files(pid: i32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == "/memfd:dprobe-agent (deleted)")
        })
        .count()
}

#[test]
fn a_second_trace_of_a_process_uses_the_agent_already_loaded() {
    let child = Running::start(&["wait"]);
    child.wait_for_handlers(&[libc::SIGUSR2]);
    for _ in 0..2 {
        let mut engine = AgentEngine::attach(child.pid(), agent(), false).unwrap();
        place(&mut engine, "probed x=$arg1");
        let mut polls = 0;
        let ending = engine
            .run(
                &mut || {
                    polls += 1;
                    polls > 50
                },
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(format!("{ending:?}"), "Asked");
        assert!(engine.stats(0).hits > 0);
        engine.finish(None, &|| false).unwrap();
    }
    assert_eq!(agent_memory_files(child.pid()), 1, "loaded once, from one memory file");
    assert_eq!(child.finish(), Some(7));
}

#[test]
fn a_program_that_runs_exec_is_traced_in_the_new_program() {
    // One call, then the same program again: 1,000 calls, each counted into the same figures.
    let mut engine = AgentEngine::spawn(program(), &["exec", program(), "calls", "1000"], agent(), false).unwrap();
    place(&mut engine, "probed x=$arg1");
    let ending = engine.run(&mut || false, &mut |_| {}).unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))", "the new program's status: its sum was right");
    assert_eq!(engine.stats(0).hits, 1001, "the call before the exec and the new program's");
    let notes = engine.notes();
    assert!(!notes.iter().any(|n| n.contains("not traced")), "{notes:?}");
}

/// The agent takes over what dprobe read of the program's files (the program itself, the C
/// library, the loader) instead of reading them again: in the started program, and in the one
/// it executes.
#[test]
fn the_agent_takes_over_dprobe_s_reading_of_the_program_s_files() {
    let mut engine = AgentEngine::spawn(program(), &["exec", program(), "calls", "10"], agent(), false).unwrap();
    place(&mut engine, "probed x=$arg1");
    assert!(engine.objects_taken_over() >= 3, "the started program's: {}", engine.objects_taken_over());
    // The C library's bytes are dprobe's sealed copy, mapped read-only and shared, not read
    // again (a mapping the agent keeps only while its reading of the file holds it).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", engine.pid())).unwrap();
    let image = |l: &&str| l.ends_with("/memfd:dprobe-image:libc.so.6 (deleted)") && l.contains(" r--s ");
    assert_eq!(maps.lines().filter(image).count(), 1, "{maps}");
    let ending = engine.run(&mut || false, &mut |_| {}).unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(0))");
    assert_eq!(engine.stats(0).hits, 11, "placed with what was taken over, in both programs");
    assert!(engine.objects_taken_over() >= 3, "the executed program's: {}", engine.objects_taken_over());
}

#[test]
fn a_program_that_runs_exec_of_a_static_program_is_said_to_be_no_longer_traced() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join("agent-static-exit.c");
    std::fs::write(&src, "int main(void) { return 7; }\n").unwrap();
    let fixed = dprobe_test_fixtures::c_program(src.to_str().unwrap(), "agent-static-exit", &["-O1", "-static"]);
    let mut engine = AgentEngine::spawn(program(), &["exec", fixed], agent(), false).unwrap();
    place(&mut engine, "probed x=$arg1");
    let ending = engine.run(&mut || false, &mut |_| {}).unwrap();
    assert_eq!(format!("{ending:?}"), "Exited(Code(7))", "the new program's status");
    assert_eq!(engine.stats(0).hits, 1, "the call before the exec");
    let notes = engine.notes();
    assert!(notes.iter().any(|n| n.contains("(a static program)") && n.contains("not traced")), "{notes:?}");
}

/// Whether process `pid` has a thread named `dprobe-agent`.
fn has_agent_thread(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "dprobe-agent"))
}

/// Kills a process if the test fails before it ends (a forked child is nobody's `Child`).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: signals a process this test made.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// The children of process `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|c| c.parse().ok()).collect()
}

#[test]
fn a_child_forked_while_traced_is_traced_and_let_go_with_its_parent() {
    let parent = Running::start(&["fork-wait"]);
    let pid = parent.pid();
    parent.wait_for_handlers(&[libc::SIGUSR1, libc::SIGUSR2]);
    let mut engine = AgentEngine::attach(pid, agent(), true).unwrap();
    engine.follow().unwrap();
    place(&mut engine, "probed x=$arg1");
    // SAFETY: signals the program this test started: it forks.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let pids = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let mut child = None;
    // Until the child's agent runs and the child's events came (a bound against hanging, not
    // a measure).
    let deadline = Instant::now() + Duration::from_secs(20);
    engine
        .run(
            &mut || {
                assert!(Instant::now() < deadline, "no events from the child");
                child = child.or_else(|| children_of(pid).first().copied());
                child.is_some_and(|c| has_agent_thread(c) && pids.borrow().contains(&(c as u32)))
            },
            &mut |e| {
                pids.borrow_mut().insert(e.pid);
            },
        )
        .unwrap();
    let child = child.unwrap();
    let _child = KillOnDrop(child);
    let pids = pids.into_inner();
    assert!(pids.contains(&(pid as u32)), "the parent's events too: {pids:?}");
    engine.finish(None, &|| false).unwrap();
    // Each agent removed its process's probes (it answered), then its thread ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while has_agent_thread(child) || has_agent_thread(pid) {
        assert!(Instant::now() < deadline, "an agent thread is still there");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signals the child of the program this test started.
    assert_eq!(unsafe { libc::kill(child, libc::SIGUSR2) }, 0);
    assert_eq!(
        parent.finish(),
        Some(7),
        "the child and the parent ran on as they were (the child's status is checked)"
    );
}
