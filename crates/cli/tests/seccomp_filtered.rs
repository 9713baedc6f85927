//! A program under a seccomp filter of its own, attached to: the system calls dprobe makes in
//! it (the ptrace engine's `mmap` of its out-of-line page) are run through the filter first,
//! and made only where it allows them. A filter that kills the process for `mmap` killed it
//! with `SIGSYS` at a plain attach; now the probe that needs the page is refused, saying why,
//! and the program finishes as untraced. A filter that allows `mmap` (as a container's does)
//! changes nothing. A filter that one thread set on itself alone keeps the agent out as a
//! process's does (it was loaded, and killed the process at that thread's first hit).
//! (Reading a program's filters takes root with no filter of dprobe's own, as CI runs the
//! tests: otherwise the first three would see the probe refused for that.)
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::{c_program_from, dprobe_command, hits};

/// Installs a filter (`kill`: the process is killed for `mmap`; `errno`: `mmap` fails with
/// `EPERM`; `allow`: everything allowed, `getppid` excepted; `none`: no filter; `worker`: a
/// thread of its own, set with `prctl` on that thread alone, kills the process for
/// `sigaltstack`, which the program never calls), says "ready", then calls `step` (through
/// `outer`) 1,000 times, and again until it reads a line, and prints the sum: the same
/// whatever traced it. With `worker`, that thread makes the calls; the first waits for it.
const PROGRAM: &str = r#"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <poll.h>
#include <unistd.h>
__attribute__((noinline)) long step(long x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((noinline)) long outer(long x) { long r = step(x); __asm__ volatile("" ::: "memory"); return r * 2; }
static void *run(void *arg) {
    const char *mode = arg;
    int worker = strcmp(mode, "worker") == 0;
    unsigned nr = strcmp(mode, "allow") == 0 ? __NR_getppid : worker ? __NR_sigaltstack : __NR_mmap;
    unsigned action = strcmp(mode, "kill") == 0 || worker ? SECCOMP_RET_KILL_PROCESS : SECCOMP_RET_ERRNO | 1;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { 4, filter };
    int none = strcmp(mode, "none") == 0;
    if (!none && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))) return "9";
    printf("ready\n");
    fflush(stdout);
    long sum = 0, calls = 0;
    struct pollfd in = { 0, POLLIN, 0 };
    do {
        for (int i = 0; i < 1000; i++) sum += outer(i);
        calls += 1000;
        usleep(1000);
    } while (poll(&in, 1, 0) == 0);
    printf("sum per 1000 calls %ld\n", sum / (calls / 1000));
    return 0;
}
int main(int argc, char **argv) {
    (void)argc;
    void *failed = 0;
    pthread_t thread;
    if (strcmp(argv[1], "worker") != 0) failed = run(argv[1]);
    else if (pthread_create(&thread, 0, run, argv[1]) || pthread_join(thread, &failed)) return 8;
    return failed ? 9 : 0;
}
"#;

fn program() -> &'static str {
    c_program_from("seccomp-filtered", PROGRAM, &["-O1"])
}

/// The program started with `filter`, once it says it is ready.
fn started(filter: &str) -> Child {
    let mut child = Command::new(program()).arg(filter).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    child
}

/// Told to end: what it printed after "ready", and its exit status.
fn finished(mut child: Child) -> (String, Option<i32>) {
    writeln!(child.stdin.take().unwrap(), "end").unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
}

/// `dprobe trace -c -d 200ms -p PID` with `probes`: its exit status and messages.
fn attached(child: &Child, engine: Option<&str>, probes: &[String]) -> (Option<i32>, String) {
    let pid = child.id().to_string();
    let mut c = dprobe_command();
    c.args(["trace", "-c", "-d", "200ms", "-p", &pid]);
    if let Some(e) = engine {
        c.args(["--engine", e]);
    }
    let o = c.args(probes).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout))
}

const SUM: &str = "sum per 1000 calls 1001000\n";

#[test]
fn a_filter_that_would_kill_the_process_for_dprobes_mmap_refuses_the_probe_and_the_program_lives() {
    for engine in [None, Some("ptrace")] {
        let child = started("kill");
        let probes = [format!("{}:step", program())];
        let (code, said) = attached(&child, engine, &probes);
        assert_ne!(code, Some(0), "{engine:?}: {said}");
        assert!(said.contains("`mmap`") && said.contains("its seccomp filter would kill the process"), "{said}");
        assert_eq!(finished(child), (SUM.to_owned(), Some(0)), "{engine:?}: {said}");
    }
}

/// A filter one thread set on itself alone: the first thread, which the agent would be
/// loaded through, has none, but that thread's hits would make a system call of the agent's
/// (`sigaltstack`) its filter kills the process for (killed at its first hit). The agent is
/// refused, naming the thread, and the default engine traces it with ptrace.
#[test]
fn a_filter_of_one_thread_alone_keeps_the_agent_out() {
    let child = started("worker");
    let worker = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != child.id())
        .unwrap();
    let spec = format!("{}:step", program());
    let (code, said) = attached(&child, Some("agent"), std::slice::from_ref(&spec));
    assert_ne!(code, Some(0), "{said}");
    let named = format!("thread {worker} of process {} runs under a seccomp filter of its own", child.id());
    assert!(said.contains(&named), "{said}");
    let (code, said) = attached(&child, None, &["-v".to_owned(), spec.clone()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("dprobe: engine: ptrace"), "{said}");
    assert!(hits(&said, &spec) > 0, "{said}");
    assert_eq!(finished(child), (SUM.to_owned(), Some(0)), "{said}");
}

#[test]
fn a_filter_that_refuses_mmap_with_an_error_says_so() {
    let child = started("errno");
    let (code, said) = attached(&child, Some("ptrace"), &[format!("{}:step", program())]);
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("its seccomp filter would refuse it (error 1)"), "{said}");
    assert_eq!(finished(child), (SUM.to_owned(), Some(0)), "{said}");
}

/// A filter that allows what dprobe does: traced as any program, its returns counted.
#[test]
fn a_filter_that_allows_mmap_changes_nothing() {
    let child = started("allow");
    let spec = format!("{}:step", program());
    let (code, said) = attached(&child, Some("ptrace"), std::slice::from_ref(&spec));
    assert_eq!(code, Some(0), "{said}");
    assert!(hits(&said, &spec) > 0, "{said}");
    assert_eq!(finished(child), (SUM.to_owned(), Some(0)), "{said}");
}

/// Runs its arguments under a filter that allows everything but `getppid`, as a container's
/// allows what its programs do.
const UNDER_A_FILTER: &str = r#"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { 4, filter };
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) return 9;
    execvp(argv[1], argv + 1);
    return 8;
}
"#;

/// dprobe itself under a filter (a container's) cannot read the filters of the program it
/// starts (the kernel refuses that request to a tracer under seccomp), and the program has
/// dprobe's alone: those allow what dprobe's own process does, and it is traced as any, every
/// call counted.
#[test]
fn dprobe_under_a_filter_traces_the_program_it_starts_under_the_same() {
    let wrapper = c_program_from("under-a-filter", UNDER_A_FILTER, &["-O1"]);
    let spec = format!("{}:step", program());
    let file = common::out_file("seccomp-started-under-a-filter");
    let mut c = Command::new(wrapper)
        .arg(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "ptrace", "-c", "-o", file.to_str().unwrap(), &spec, "--", program(), "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "end").unwrap();
    let o = c.wait_with_output().unwrap();
    let summary = std::fs::read_to_string(&file).unwrap_or_default();
    let said = format!("{}{summary}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{said}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("ready\n{SUM}"), "{said}");
    assert_eq!(hits(&summary, &spec), 1000, "{said}");
}
