//! Static probes' semaphores where the probes reach after the trace started: in a library the
//! program loads with `dlopen` (and loads again after `dlclose`), and in a forked child. The
//! program fires its probe only when its semaphore is not 0 and prints the counter as it reads
//! it from its memory (`usdt_later.c`): 1 while probed (raised once, by the one probe), back
//! to 0 after, and raised in a child only while the child is followed. The ptrace engine
//! writes the counters from outside, the agent engine from inside the program. (The kernel
//! engine passes the semaphore to the kernel as the uprobe's reference counter, which the
//! kernel raises in every process that maps the file.)
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{dprobe_command, hits, out_file, trace_to_file};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The program and its library, under names of `engine`'s own.
fn programs(engine: &str) -> (&'static str, &'static str) {
    let c = dprobe_test_fixtures::c_program;
    let prog = c(&format!("{FIXTURES}/usdt_later.c"), &format!("usdt_later-{engine}"), &["-O2", "-g"]);
    let lib_name = format!("libusdt_later-{engine}.so");
    let lib = c(&format!("{FIXTURES}/usdt_later_lib.c"), &lib_name, &["-O2", "-g", "-shared", "-fPIC"]);
    (prog, lib)
}

/// What the events of `label` carried, in order (inside `call label(...)`).
fn events(trace: &str, label: &str) -> Vec<String> {
    let call = format!(" call {label}(");
    trace.lines().filter_map(|l| Some(l.split_once(&call)?.1.strip_suffix(')')?.to_owned())).collect()
}

/// Attach to `usdt_later serve LIB` before it loads LIB; each step loads it (again after
/// `unload`) and must see its semaphore at 1, and the first step after dprobe let go must see
/// it 0 again.
fn library_loaded_later(engine: &str) {
    let (prog, lib) = programs(engine);
    let mut child =
        Command::new(prog).args(["serve", lib]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    let mut send = |line: &str| -> Option<String> {
        writeln!(input, "{line}").unwrap();
        if line != "step" {
            return None;
        }
        let mut answer = String::new();
        output.read_line(&mut answer).unwrap();
        Some(answer.trim_end().to_owned())
    };
    let out = out_file(&format!("usdt-later-{engine}"));
    let spec = format!("usdt:{lib}:later:step n=$arg1");
    let pid = child.id().to_string();
    let mut tracer = dprobe_command()
        .args(["trace", "-v", "--engine", engine, "-o", out.to_str().unwrap(), "-p", &pid, &spec])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // dprobe says the library is not loaded yet once it has attached and is waiting for it,
    // and (with -v) that it is tracing once its probes count: the agent's count from the
    // trace's window, which opens after the note.
    let mut stderr = BufReader::new(tracer.stderr.take().unwrap());
    let mut said = String::new();
    while !(said.contains("not loaded yet") && said.contains("dprobe: tracing")) {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "{engine}: dprobe ended: {said}");
        said += &line;
    }
    let mut seen = vec![send("step"), send("step")];
    send("unload");
    seen.push(send("step"));
    let want = ["step 1 semaphore=1", "step 2 semaphore=1", "step 1 semaphore=1"].map(|s| Some(s.to_owned()));
    assert_eq!(seen, want, "{engine}: each load of the library has its semaphore set");
    // SAFETY: a signal to the dprobe this test started.
    assert_eq!(unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) }, 0);
    let status = tracer.wait().unwrap();
    let trace = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status.code(), Some(0), "{engine}\n{trace}");
    assert_eq!(send("step").as_deref(), Some("step 2 semaphore=0"), "{engine}: after the trace, 0 again");
    assert_eq!(events(&trace, "later:step"), ["n=1", "n=2", "n=1"], "{engine}\n{trace}");
    assert_eq!(hits(&trace, &format!("usdt:{lib}:later:step")), 3, "{engine}\n{trace}");
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_library_loaded_later_has_its_semaphore_set_while_probed_and_given_back_after_ptrace() {
    library_loaded_later("ptrace");
}

#[test]
fn a_library_loaded_later_has_its_semaphore_set_while_probed_and_given_back_after_agent() {
    library_loaded_later("agent");
}

/// `usdt_later fork 2` under `dprobe trace --engine engine`, with or without `--follow`:
/// (the program's lines, the trace).
fn forked(engine: &str, follow: bool) -> (Vec<String>, String) {
    let (prog, _) = programs(engine);
    let spec = format!("usdt:{prog}:later:round i=$arg1");
    let mut args = vec!["--engine", engine, &spec, "--", prog, "fork", "2"];
    if !follow {
        args.insert(0, "--no-follow");
    }
    let t = trace_to_file(&format!("usdt-later-fork-{engine}-{follow}"), &args);
    assert_eq!(t.code, Some(0), "{engine}: {}\n{}", t.stderr, t.trace);
    (t.stdout.lines().map(str::to_owned).collect(), t.trace)
}

/// A forked child inherits the raised semaphore with the probes. Followed, its rounds fire
/// and are counted; not followed, it gets its semaphore back lowered with its original code,
/// and skips the probe as an untraced program does.
fn forked_child(engine: &str) {
    let (lines, trace) = forked(engine, true);
    let want = ["child round=1 semaphore=1", "child round=2 semaphore=1", "parent round=0 semaphore=1"];
    assert_eq!(lines, want, "{engine}\n{trace}");
    assert_eq!(events(&trace, "later:round"), ["i=1", "i=2", "i=0"], "{engine}\n{trace}");
    let (lines, trace) = forked(engine, false);
    let want = ["child round=1 semaphore=0", "child round=2 semaphore=0", "parent round=0 semaphore=1"];
    assert_eq!(lines, want, "{engine}\n{trace}");
    assert_eq!(events(&trace, "later:round"), ["i=0"], "{engine}\n{trace}");
}

#[test]
fn a_forked_child_has_the_semaphore_set_only_while_followed_ptrace() {
    forked_child("ptrace");
}

#[test]
fn a_forked_child_has_the_semaphore_set_only_while_followed_agent() {
    forked_child("agent");
}
