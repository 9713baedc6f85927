//! What the command-line tests share: the fixture programs and running `dprobe`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod rounds;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ptrace/tests/fixtures");

/// The target program of the ptrace engine's tests (its modes check their own results).
pub fn target() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/target.c"), "target", &["-O2", "-pthread"])
}

/// The library the target loads with `dlopen`.
pub fn plugin() -> &'static str {
    dprobe_test_fixtures::c_program(
        &format!("{FIXTURES}/plugin.c"),
        "libdprobe_plugin.so",
        &["-O2", "-shared", "-fPIC"],
    )
}

/// A C++ program that adds with its own `operator+` (`operators N`).
pub fn operators() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/operators.cpp"), "operators", &["-O2"])
}

/// The program the kernel engine's tests probe system-wide: `greet NAME N`.
pub fn greet() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/greet.c");
    dprobe_test_fixtures::c_program(src, "greet", &["-O2"])
}

/// Run `dprobe trace ARGS` for each case and check that it is refused with exit status 2
/// and a message containing the expected text, never a panic.
pub fn assert_refused(cases: &[(&[&str], &str)]) {
    for (args, expected) in cases {
        let mut all = vec!["trace"];
        all.extend_from_slice(args);
        let o = dprobe(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The mappings of files (programs and libraries) in `maps`: what must be as it was after the
/// agent engine is gone (its own library and the pages it mapped stay).
pub fn file_mappings(maps: &str) -> Vec<&str> {
    let file = |l: &&str| l.split_whitespace().nth(5).is_some_and(|p| p.starts_with('/') && !p.starts_with("/memfd:"));
    maps.lines().filter(file).collect()
}

/// C functions: `int traced(void)`, whether the process has a tracer now (its `TracerPid`),
/// and `int exec_fails_then_untraced(void)` (the source includes errno.h, time.h, unistd.h).
const TRACED_C: &str = r#"
static int traced(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int tracer = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "TracerPid: %d", &tracer) == 1)
            break;
    if (f)
        fclose(f);
    return tracer != 0;
}
/* An `exec` that fails (no such file), then a wait of at most 10 s until the process has no
   tracer: whether the failure was ENOENT. */
static int exec_fails_then_untraced(void) {
    char *none[] = {"none", NULL};
    execv("/nonexistent-dprobe-dir/none", none);
    int enoent = errno == ENOENT;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do
        clock_gettime(CLOCK_MONOTONIC, &now);
    while (traced() && now.tv_sec - start.tv_sec < 10);
    return enoent;
}
"#;

/// C source `source` with [`TRACED_C`] where it says `/* TRACED: ... */` (after its includes).
pub fn with_traced(source: &str) -> String {
    let (before, after) = source.split_once("/* TRACED:").expect("a place for traced()");
    let after = after.split_once("*/").expect("the comment's end").1;
    format!("{before}{TRACED_C}{after}")
}

/// C source `source` written to a file of its own and built as `name` with `flags` (each
/// test's own copy: the tests run at once).
pub fn c_program_from(name: &str, source: &str, flags: &[&str]) -> &'static str {
    let src = out_file(&format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), name, flags)
}

/// A C program that prints `ready`, then calls its `work` as many times as its argument says,
/// 10 ms apart, and prints the sum of what they returned (`i * 2` for each `i`).
const READY_THEN_WORK: &str = r#"
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
/* Whether standard input was closed (or has something to read). */
static int told(void) { struct pollfd p = { 0, POLLIN, 0 }; return poll(&p, 1, 0) > 0; }
int main(int argc, char **argv) {
    long s = 0, calls = argc > 1 ? atol(argv[1]) : 100;
    printf("ready\n");
    fflush(stdout);
    /* A negative count: until standard input is closed, then the calls made and their sum. */
    for (long i = 0; calls < 0 || i < calls; i++) {
        if (calls < 0 && told()) { printf("%ld %ld\n", i, s); return 0; }
        s += work(i);
        usleep(10000);
    }
    printf("%ld\n", s);
    return 0;
}
"#;

/// `program` started with its standard input and output piped, once it printed `ready`: the
/// process and its output from then on.
pub fn start_ready(program: &str) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

/// [`READY_THEN_WORK`] started for `calls` calls, once it said it is ready: the process (its
/// probe is `ready-then-work:work`) and its output from then on.
pub fn start_ready_then_work(calls: u32) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    ready_then_work(&calls.to_string(), std::process::Stdio::null())
}

/// [`READY_THEN_WORK`] started to call `work` until its standard input (the child's `stdin`)
/// is closed, once it said it is ready; it then prints the calls made and their sum (see
/// [`calls_and_sum_right`]). For a test whose steps take as long as the machine makes them.
pub fn start_ready_then_work_until_told() -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    ready_then_work("-1", std::process::Stdio::piped())
}

fn ready_then_work(
    calls: &str,
    stdin: std::process::Stdio,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let program = c_program_from("ready-then-work", READY_THEN_WORK, &["-O1"]);
    let mut child = Command::new(program).arg(calls).stdin(stdin).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

/// Whether `line` says `calls sum`, the sum being that of `work(i) = 2i` for each call made:
/// the program's own result, as untraced.
pub fn calls_and_sum_right(line: &str) -> bool {
    let mut words = line.split_whitespace().map(|w| w.parse::<i64>().ok());
    match (words.next().flatten(), words.next().flatten(), words.next()) {
        (Some(calls), Some(sum), None) => calls > 0 && sum == calls * (calls - 1),
        _ => false,
    }
}

/// A fresh file path for `-o`.
pub fn out_file(name: &str) -> PathBuf {
    dprobe_test_fixtures::scratch_dir(Path::new(env!("CARGO_TARGET_TMPDIR")), "cli").join(name)
}

/// The `dprobe` command with SIGINT at its default, for the tests that send it one: a test run
/// as a background job of a shell without job control inherits SIGINT ignored, and dprobe keeps
/// ignoring a stop signal it was started with ignored (as programs do).
pub fn dprobe_command() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_dprobe"));
    // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

/// `dprobe ARGS`, waited for.
pub fn dprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dprobe")).args(args).output().unwrap()
}

/// What `dprobe trace -o FILE ARGS` did.
pub struct Traced {
    /// dprobe's exit status.
    pub code: Option<i32>,
    /// What the traced program printed (dprobe's standard output is the program's).
    pub stdout: String,
    /// dprobe's own messages.
    pub stderr: String,
    /// What dprobe wrote to FILE (empty if it wrote nothing).
    pub trace: String,
}

impl Traced {
    /// For an assertion's message: `label`, dprobe's messages and the trace.
    pub fn what(&self, label: &str) -> String {
        format!("{label}\n{}\n{}", self.stderr, self.trace)
    }
}

/// `dprobe trace -o FILE ARGS`, FILE a fresh file named `name`, waited for; dprobe never panics.
pub fn trace_to_file(name: &str, args: &[&str]) -> Traced {
    let out = out_file(name);
    let mut all = vec!["trace", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = dprobe(&all);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let traced = Traced {
        code: o.status.code(),
        stdout: text(&o.stdout),
        stderr: text(&o.stderr),
        trace: std::fs::read_to_string(&out).unwrap_or_default(),
    };
    assert!(!traced.stderr.contains("panicked"), "no panic: {}", traced.stderr);
    traced
}

/// `dprobe trace -o FILE ARGS`: (exit code, what it wrote to FILE).
pub fn trace(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let t = trace_to_file(name, args);
    (t.code, t.trace)
}

/// `dprobe trace -o FILE ARGS -- workers`, which must succeed: (what dprobe wrote to FILE,
/// what the program printed).
pub fn trace_workers(name: &str, args: &[&str]) -> (String, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--", workers()]);
    let t = trace_to_file(name, &all);
    assert_eq!(t.code, Some(0), "{}", t.what(name));
    (t.trace, t.stdout)
}

/// The `thread NAME TID CALLS` lines the workers program prints: (name, tid, calls).
pub fn worker_threads(printed: &str) -> Vec<(String, u64, u64)> {
    let rows = printed.lines().filter_map(|l| l.strip_prefix("thread "));
    rows.map(|r| {
        let f: Vec<&str> = r.split_whitespace().collect();
        (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap())
    })
    .collect()
}

/// The count column of `probe` in a summary table.
pub fn hits(summary: &str, probe: &str) -> u64 {
    summary_columns(summary, probe)[0].parse().unwrap()
}

/// The RETURNS column of `probe`'s line in a summary.
pub fn returns(summary: &str, probe: &str) -> u64 {
    summary_columns(summary, probe)[1].parse().unwrap()
}

/// How many returns of `probe` the summary's notes say were not seen.
pub fn not_seen(summary: &str, probe: &str) -> u64 {
    let note = format!("{probe}: ");
    let line = summary.lines().map(str::trim).find(|l| l.starts_with(&note) && l.contains(" returns not seen: "));
    line.map_or(0, |l| l[note.len()..].split_whitespace().next().unwrap().parse().unwrap())
}

/// The MISSED column of `probe`'s line in a summary.
pub fn missed(summary: &str, probe: &str) -> u64 {
    summary_columns(summary, probe)[2].parse().unwrap()
}

/// The columns after `probe`'s name on its line of a summary: HITS, RETURNS, MISSED.
fn summary_columns<'a>(summary: &'a str, probe: &str) -> Vec<&'a str> {
    let line = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(probe))
        .unwrap_or_else(|| panic!("no line for {probe} in:\n{summary}"));
    // A probe with several sites says how many after its name: `scale (4 sites)`.
    let rest = line[probe.len()..].trim_start();
    let rest = match rest.strip_prefix('(') {
        Some(r) => &r[r.find(')').expect("closed") + 1..],
        None => rest,
    };
    rest.split_whitespace().collect()
}

/// The bytes at `addr` in process `pid`, through its memory file.
pub fn read_mem(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(format!("/proc/{pid}/mem")).unwrap().read_exact_at(&mut b, addr).unwrap();
    b
}

/// Where function `name` is in process `pid`.
pub fn function_addr(pid: i32, name: &str) -> u64 {
    let maps = dprobe_sym::read_maps_of(pid as u32).unwrap();
    dprobe_sym::Symbols::load(&maps).find(name).unwrap().start.0
}

/// `kernel_returns MODE N`: the shapes return probes meet (its source says what each mode does).
pub fn kernel_returns() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel_returns.cpp");
    let path = dprobe_test_fixtures::c_program_by("g++", src, "kernel_returns", &["-O2", "-pthread"]);
    Box::leak(std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned().into_boxed_str())
}

/// Four named threads calling `work(size)` known numbers of times (`workers.c` says which).
pub fn workers() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/workers.c");
    dprobe_test_fixtures::c_program(src, "workers", &["-O2", "-pthread"])
}

/// The programs shared with the other crate's tests (each test binary uses some of them).
#[allow(unused_imports)]
pub use dprobe_test_fixtures::programs::{ctor_plugin, exits, family, loads, throws};

/// A program with static probes (`usdt run N`, `usdt serve`; `usdt.c` says what it prints),
/// built at `opt` (`-O0`: arguments on the stack; `-O2`: in registers).
pub fn usdt(opt: &str) -> &'static str {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let plain = format!("{dir}/usdt_plain.c");
    dprobe_test_fixtures::c_program(&format!("{dir}/usdt.c"), &format!("usdt{opt}"), &[opt, plain.as_str()])
}

/// Request handlers for globs (`handlers N`; `handlers.c` says how often each runs).
pub fn handlers() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/handlers.c");
    dprobe_test_fixtures::c_program(src, "handlers", &["-O2"])
}

/// The wall clock now, in nanoseconds since 1970.
pub fn wall_now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// Check the times of `--json` events: each `wall_time` (RFC 3339) between `before` and
/// `after` (wall-clock nanoseconds read around the trace), `time_ns` never going back on
/// one thread, `wall_time` and `time_ns` one offset apart, `time` (seconds since the start)
/// from 0 to the run's length. Returns the events' (tid, kind) in order.
pub fn check_event_times(json: &str, before: i128, after: i128) -> Vec<(u64, String)> {
    let mut last: std::collections::HashMap<u64, u64> = Default::default();
    let mut offset = None;
    let mut seen = Vec::new();
    for line in json.lines().filter(|l| l.starts_with('{')) {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let tid = e["tid"].as_u64().unwrap();
        let mono = e["time_ns"].as_u64().unwrap_or_else(|| panic!("no time_ns: {line}"));
        let wall: jiff::Timestamp = e["wall_time"].as_str().unwrap().parse().unwrap();
        let wall = wall.as_nanosecond();
        assert!(before <= wall && wall <= after, "{line}: not within the trace ({before}..{after})");
        let this_offset = wall - i128::from(mono);
        assert_eq!(*offset.get_or_insert(this_offset), this_offset, "one offset for all: {line}");
        let previous = last.insert(tid, mono).unwrap_or(0);
        assert!(previous <= mono, "time went back on thread {tid}: {previous} then {line}");
        let rel = e["time"].as_f64().unwrap();
        assert!(rel >= 0.0 && rel * 1e9 <= (after - before) as f64, "{line}: relative time");
        seen.push((tid, e["kind"].as_str().unwrap().to_owned()));
    }
    seen
}

/// Calls libc's `strlen` (an indirect function) N times on a marker string (`ifunc N`).
pub fn ifunc() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ifunc.c");
    dprobe_test_fixtures::c_program(src, "ifunc", &["-O2"])
}

/// The source-lines fixture (`lines N`: prints how often `scale` and the THIRD line ran).
pub const LINES_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dwarf/tests/fixtures/lines.c");

/// The source-lines fixture built with `-g` by `cc` at `opt` (`-O0`, `-O2`).
pub fn lines_program(cc: &str, opt: &str) -> &'static str {
    dprobe_test_fixtures::c_program_by(cc, LINES_SOURCE, &format!("lines-{cc}{opt}"), &["-g", opt])
}

/// The line of the lines fixture whose text contains `marker`.
pub fn line_of(marker: &str) -> u32 {
    let text = std::fs::read_to_string(LINES_SOURCE).unwrap();
    text.lines().position(|l| l.contains(marker)).expect(marker) as u32 + 1
}

/// The program of the DWARF variable tests (`vars.c`) built with `compiler` at `opt` with
/// `-g`, once per test process; `extra` flags are added (and named in the file name).
pub fn vars_program(compiler: &str, opt: &str, extra: &[&str]) -> String {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../dwarf/tests/fixtures/vars.c");
    let tag: String = extra.iter().map(|e| e.replace(|c: char| !c.is_ascii_alphanumeric(), "")).collect();
    // Built once per process, under a lock: a program put again over one that another test
    // runs would be another file, which the probes that test resolved do not name.
    let flags: Vec<&str> = ["-g", opt].into_iter().chain(extra.iter().copied()).collect();
    dprobe_test_fixtures::c_program_by(compiler, src, &format!("vars-{compiler}{opt}{tag}"), &flags).to_owned()
}

/// The first child of process `pid`, if it has one, whichever of its threads made it
/// (dprobe's tracing process starts a command from its tracing thread).
pub fn first_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut tids: Vec<u32> = tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    tids.into_iter().find_map(|tid| {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).ok()?;
        children.split_whitespace().next().map(|c| c.parse().unwrap())
    })
}

/// The process of `dprobe trace` (started as `dprobe`) that traces: its child, which outlives
/// it (`dprobe` itself only waits for it and passes signals on).
pub fn holder(dprobe: u32) -> Option<u32> {
    first_child(dprobe)
}

/// The command `dprobe trace ... -- COMMAND` (started as `dprobe`) started, once it has.
pub fn started_command(dprobe: u32) -> Option<i32> {
    first_child(holder(dprobe)?).map(|c| c as i32)
}

/// The fixture calling libc's `memcpy` and `memset` (`mem_calls N`: N calls of each, with
/// sizes 4321 and 4327; prints a checksum).
pub fn mem_calls() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mem_calls.c");
    dprobe_test_fixtures::c_program(src, "mem_calls", &["-O2"])
}

/// Whether the C library loads a call's number just before its `syscall` in
/// `clock_nanosleep` (glibc up to 2.40), the shape the safepoint's handler recognizes; glibc
/// 2.41 and later make a threaded program's calls through one function, where it does not.
pub fn wrappers_name_their_calls() -> bool {
    use std::os::unix::fs::FileExt;
    // SAFETY: dlsym with a valid name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"clock_nanosleep".as_ptr()) } as u64;
    let mut code = [0u8; 160];
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    f != 0
        && mem.read_exact_at(&mut code, f).is_ok()
        && code.windows(7).any(|w| w[0] == 0xb8 && w[1..5] == 230u32.to_le_bytes() && w[5..] == [0x0f, 0x05])
}

/// A child process a test runs (the traced program, or its parent); killed if the test fails
/// before it ends.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the C library's function `name` starts with `endbr64` (a library built for CET):
/// its first instruction after it is no longer at an aligned entry.
pub fn libc_function_starts_with_endbr64(name: &std::ffi::CStr) -> bool {
    // SAFETY: looks a symbol up in the libraries loaded, and reads 4 bytes of its code.
    unsafe {
        let at = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()).cast::<[u8; 4]>();
        !at.is_null() && at.read() == [0xf3, 0x0f, 0x1e, 0xfa]
    }
}
