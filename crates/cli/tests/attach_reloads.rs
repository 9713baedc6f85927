//! The agent attached (`-p`) to a program that loads and unloads a library while the probes
//! are placed, and after: the probe on the library loaded at the time follows its later loads,
//! and a placing that races an unload waits for the next load instead of failing. A probe on
//! a library loaded with the program stays in place while other libraries come and go.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hits, out_file};

/// Two libraries of the same shape (the loader may put one where the other was).
fn libraries() -> (String, String) {
    // Built once: the tests run at once, and each would write the same sources.
    static BUILT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_libraries).clone()
}

fn build_libraries() -> (String, String) {
    let build = |name: &str, body: &str| {
        let src = out_file(&format!("{name}.c"));
        std::fs::write(&src, format!("__attribute__((noinline)) long {body}")).unwrap();
        dprobe_test_fixtures::c_program(src.to_str().unwrap(), &format!("{name}.so"), &["-O2", "-shared", "-fPIC"])
            .to_owned()
    };
    (
        build("libreload_x", "xfunc(long v) { __asm__ volatile(\"\" ::: \"memory\"); return v * 9 + 2; }"),
        build("libreload_y", "yfunc(long v) { __asm__ volatile(\"\" ::: \"memory\"); return v * 5 + 1; }"),
    )
}

/// `reloads X Y once`: loads X, says `ready`, waits for `SIGUSR1`, then calls `xfunc` 10 times,
/// unloads X, loads and calls Y, loads X again and calls `xfunc` 10 times more, and prints
/// how many calls returned a wrong value. `reloads X Y loop`: rounds of loading X or Y in turn
/// and calling its function 1,000 times, until `SIGUSR1`.
const PROGRAM: &str = r#"
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static long bad;
static void calls(const char *lib, const char *name, long times, long mul, long add) {
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); exit(1); }
    long (*f)(long) = (long (*)(long))dlsym(h, name);
    for (long i = 0; i < times; i++) bad += f(i) != i * mul + add;
    dlclose(h);
}
int main(int argc, char **argv) {
    (void)argc;
    signal(SIGUSR1, on_usr1);
    if (strcmp(argv[3], "once") == 0) {
        void *h = dlopen(argv[1], RTLD_NOW);
        long (*f)(long) = (long (*)(long))dlsym(h, "xfunc");
        printf("ready\n");
        fflush(stdout);
        while (!go) usleep(1000);
        for (long i = 0; i < 10; i++) bad += f(i) != i * 9 + 2;
        dlclose(h);
        calls(argv[2], "yfunc", 10, 5, 1);
        calls(argv[1], "xfunc", 10, 9, 2);
    } else {
        for (long r = 0; !go; r++)
            if (r & 1) calls(argv[1], "xfunc", 1000, 9, 2);
            else calls(argv[2], "yfunc", 1000, 5, 1);
    }
    printf("bad=%ld\n", bad);
    return 0;
}
"#;

/// Kills the program if the test ends before it was waited for (a failed assertion), so that
/// it never outlives the test.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: signals our own child, not waited for yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn program() -> &'static str {
    let src = out_file("reloads.c");
    std::fs::write(&src, PROGRAM).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "reloads", &["-O2"])
}

/// The first byte of `xfunc` in process `pid`, once `libreload_x` is mapped there.
fn first_byte_of_xfunc(pid: u32, x: &str) -> Option<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let base = maps.lines().find(|l| l.ends_with(x) && l.contains(" 00000000 "))?;
    let base = u64::from_str_radix(base.split('-').next()?, 16).ok()?;
    let symbols = dprobe_sym::Symbols::load_file(x).ok()?;
    let offset = symbols.find("xfunc")?.start.0;
    Some(common::read_mem(pid as i32, base + offset, 1)[0])
}

#[test]
fn a_library_loaded_when_the_agent_attached_is_probed_again_when_loaded_again() {
    let (x, y) = libraries();
    let mut child = Command::new(program()).args([&x, &y, "once"]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut kill = KillOnDrop(Some(pid));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let original = first_byte_of_xfunc(pid, &x).expect("xfunc is mapped");

    let probe = format!("{x}:xfunc");
    let (trace, said) = (out_file("attach-reload-once"), out_file("attach-reload-once.err"));
    let dprobe = common::dprobe_command()
        .args(["trace", "-v", "--engine", "agent", "-c", "-o", trace.to_str().unwrap(), "-p", &pid.to_string(), &probe])
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    // Placed (the function's first byte is dprobe's, a jump or a trap), and counting: dprobe
    // says it traces once every probe is placed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let tracing = || std::fs::read_to_string(&said).unwrap_or_default().contains("dprobe: tracing");
    while first_byte_of_xfunc(pid, &x) == Some(original) || !tracing() {
        assert!(Instant::now() < deadline, "the probe was never placed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "bad=0\n");
    let status = child.wait().unwrap();
    kill.0 = None;
    assert_eq!(status.code(), Some(0));
    let done = dprobe.wait_with_output().unwrap();
    let summary = std::fs::read_to_string(&trace).unwrap_or_default();
    let what = format!("{}\n{summary}", std::fs::read_to_string(&said).unwrap_or_default());
    assert_eq!(done.status.code(), Some(0), "{what}");
    assert_eq!(hits(&summary, &probe), 20, "the calls before the unload and after the load again\n{what}");
}

#[test]
fn attaching_while_the_library_comes_and_goes_never_fails_and_never_harms() {
    let (x, y) = libraries();
    let child = Command::new(program()).args([&x, &y, "loop"]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id().to_string();
    let mut kill = KillOnDrop(Some(child.id()));
    let probe = format!("{x}:xfunc%return");
    for round in 0..6 {
        let t = common::trace_to_file(
            &format!("attach-reload-loop-{round}"),
            &["--engine", "agent", "-c", "-d", "300ms", "-p", &pid, &probe],
        );
        let what = t.what(&format!("attach {round}"));
        assert_eq!(t.code, Some(0), "{what}");
        assert!(hits(&t.trace, &probe) > 0, "{what}");
    }
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let done = child.wait_with_output().unwrap();
    kill.0 = None;
    assert_eq!(String::from_utf8_lossy(&done.stdout), "bad=0\n");
    assert_eq!(done.status.code(), Some(0));
}

/// `startup_lib X N`: a thread loads and unloads library X in a loop while the main thread
/// calls `kfunc` of `libkeep.so` (a library loaded with the program: one it needs, or one
/// preloaded) N times and until X was unloaded 100 times; prints how many calls it made and
/// how many were wrong.
const STARTUP_LIB: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static const char *other;
static volatile int done;
static volatile long reloads;
static void *reload(void *a) {
    (void)a;
    while (!done) {
        void *h = dlopen(other, RTLD_NOW);
        if (!h) { printf("dlopen: %s\n", dlerror()); exit(1); }
        dlclose(h);
        reloads++;
    }
    return 0;
}
int main(int argc, char **argv) {
    (void)argc;
    other = argv[1];
    long (*kfunc)(long) = (long (*)(long))dlsym(RTLD_DEFAULT, "kfunc");
    if (!kfunc) { printf("no kfunc\n"); return 1; }
    long n = atol(argv[2]), i, bad = 0;
    pthread_t t;
    pthread_create(&t, 0, reload, 0);
    for (i = 0; i < n || reloads < 100; i++)
        bad += kfunc(i) != i * 3 + 1;
    done = 1;
    pthread_join(t, 0);
    printf("calls=%ld bad=%ld\n", i, bad);
    return 0;
}
"#;

/// `libkeep.so`, and `startup_lib` built with it as a needed library (`linked`) or without.
fn startup_programs() -> (&'static str, &'static str, &'static str) {
    static BUILT: std::sync::OnceLock<(&str, &str, &str)> = std::sync::OnceLock::new();
    *BUILT.get_or_init(build_startup_programs)
}

fn build_startup_programs() -> (&'static str, &'static str, &'static str) {
    let keep_src = out_file("libkeep.c");
    std::fs::write(&keep_src, "long kfunc(long v) { __asm__ volatile(\"\" ::: \"memory\"); return v * 3 + 1; }\n")
        .unwrap();
    let keep = dprobe_test_fixtures::c_program(
        keep_src.to_str().unwrap(),
        "libkeep.so",
        &["-O2", "-shared", "-fPIC", "-Wl,-soname,libkeep.so"],
    );
    let dir = keep.rsplit_once('/').unwrap().0;
    let src = out_file("startup_lib.c");
    std::fs::write(&src, STARTUP_LIB).unwrap();
    let rpath = format!("-Wl,-rpath,{dir}");
    let linked = dprobe_test_fixtures::c_program(
        src.to_str().unwrap(),
        "startup_lib",
        &["-O2", "-pthread", "-Wl,--no-as-needed", keep, &rpath, "-ldl"],
    );
    let alone =
        dprobe_test_fixtures::c_program(src.to_str().unwrap(), "startup_lib_alone", &["-O2", "-pthread", "-ldl"]);
    (keep, linked, alone)
}

/// Trace `kfunc` of `libkeep.so` in `command`: every call the program made was seen, the ones
/// made while the loader unloaded the other library included.
fn every_kfunc_call_counted(name: &str, command: &[&str]) {
    let probe = "libkeep.so:kfunc";
    let args: Vec<&str> = ["--engine", "agent", "-c", probe, "--"].iter().chain(command).copied().collect();
    let t = common::trace_to_file(name, &args);
    let what = t.what("agent");
    let calls = t.stdout.strip_prefix("calls=").and_then(|r| r.strip_suffix(" bad=0\n")).map(str::parse::<u64>);
    let Some(Ok(calls)) = calls else { panic!("{}\n{what}", t.stdout) };
    assert_eq!(t.code, Some(0), "{what}");
    assert_eq!(hits(&t.trace, probe), calls, "{what}");
}

#[test]
fn a_probe_on_a_library_loaded_with_the_program_counts_every_call_while_others_come_and_go() {
    let (x, _) = libraries();
    let (_, linked, _) = startup_programs();
    every_kfunc_call_counted("startup-lib", &[linked, &x, "20000"]);
}

/// A preloaded library (`LD_PRELOAD`, as a replacement allocator is) is loaded with the
/// program too: 801,961 of 84,988,796 calls were counted when it was taken for one `dlopen`
/// loaded. Through `env`, whose `exec` the agent follows.
#[test]
fn a_probe_on_a_preloaded_library_counts_every_call_while_others_come_and_go() {
    let (x, _) = libraries();
    let (keep, _, alone) = startup_programs();
    let preload = format!("LD_PRELOAD={keep}");
    every_kfunc_call_counted("startup-preload", &["/usr/bin/env", &preload, alone, &x, "20000"]);
}
