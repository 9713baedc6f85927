//! dprobe's own descriptors stay out of the traced program's way: a started program's first
//! `open` gets the number it gets untraced; a program that closes every descriptor it did not
//! open (a daemon's `close_range`) is unharmed, its files untouched and its next files given
//! the numbers they get untraced, and stays traced; a process dprobe attaches to holds no
//! descriptor of the agent's but the memory file it loads the agent from, out of its way,
//! while traced and once let go.
mod common;

use std::process::{Command, Stdio};

use common::trace_to_file;

const FIRST_OPEN: &str = r#"
#include <fcntl.h>
#include <stdio.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
int main(void) {
    long s = 0;
    for (int i = 0; i < 100; i++) s += work(i);
    printf("first open %d, sum %ld\n", open("/dev/null", O_RDONLY), s);
    return 0;
}
"#;

#[test]
fn a_started_programs_first_open_gets_the_number_it_gets_untraced() {
    let program = common::c_program_from("first-open", FIRST_OPEN, &["-O1"]);
    let untraced = Command::new(program).stdin(Stdio::null()).output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert!(untraced.starts_with("first open 3,"), "{untraced}");
    let probe = format!("{}:work", program.rsplit_once('/').unwrap().1);
    for engine in ["ptrace", "agent"] {
        let t = trace_to_file(&format!("first-open-{engine}"), &["--engine", engine, "-c", &probe, "--", program]);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), untraced.as_str()), "{}", t.what(engine));
        assert_eq!(common::hits(&t.trace, &probe), 100, "{}", t.what(engine));
    }
}

const OPENER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
int main(void) {
    int s = 0, n = 0;
    for (int i = 0; i < 10; i++) s += work(i);
    while (open("/dev/null", O_RDONLY) >= 0) n++;
    printf("opened %d, sum %d\n", n, s);
    return 0;
}
"#;

/// `cmd` run with 256 open files at most, its hard limit 4,096: room above the soft limit.
fn with_few_files(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child before `exec` and makes one system call.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256, rlim_max: 4096 };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    }
}

/// A program that opens files until it may open no more (`EMFILE`) opens as many traced as
/// untraced: where its hard limit leaves room above its soft one, dprobe's descriptors go there.
#[test]
fn a_program_opens_as_many_files_traced_as_untraced() {
    let program = common::c_program_from("opener", OPENER, &["-O1"]);
    let untraced = with_few_files(Command::new(program).stdin(Stdio::null())).output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert!(untraced.ends_with(", sum 90\n"), "{untraced}");
    let probe = format!("{}:work", program.rsplit_once('/').unwrap().1);
    for engine in ["ptrace", "agent"] {
        let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"));
        dprobe.args(["trace", "--engine", engine, "-c", &probe, "--", program]).stdin(Stdio::null());
        let traced = with_few_files(&mut dprobe).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&traced.stdout), String::from_utf8_lossy(&traced.stderr));
        let what = format!("{engine}\n{stdout}\n{stderr}");
        assert_eq!(traced.status.code(), Some(0), "{what}");
        assert_eq!(stdout.lines().next(), untraced.lines().next(), "{what}");
        assert_eq!(common::hits(&stderr, &probe), 10, "{what}");
    }
}

const CLOSER: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
int main(int argc, char **argv) {
    long s = 0;
    for (int i = 0; i < 10; i++) { s += work(i); usleep(20000); }
    close_range(3, ~0U, 0);   /* a daemon closing what it inherited */
    int fds[3];
    for (int k = 0; k < 3; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%d", argv[1], k);
        fds[k] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        write(fds[k], "data\n", 5);
    }
    for (int i = 10; i < 40; i++) { s += work(i); usleep(20000); }
    long sizes = 0;
    for (int k = 0; k < 3; k++) { struct stat st; fstat(fds[k], &st); sizes += st.st_size; }
    printf("fds %d %d %d sizes %ld sum %ld\n", fds[0], fds[1], fds[2], sizes, s);
    return 0;
}
"#;

#[test]
fn a_program_that_closes_every_descriptor_it_did_not_open_is_unharmed() {
    let program = common::c_program_from("closer", CLOSER, &["-O1"]);
    let probe = format!("{}:work", program.rsplit_once('/').unwrap().1);
    for engine in ["ptrace", "agent"] {
        for detach in [false, true] {
            let files = common::out_file(&format!("closer-{engine}-{detach}"));
            let files = files.to_str().unwrap();
            let mut args = vec!["--engine", engine, "-c", &probe];
            if detach {
                // After the close, while it runs.
                args.extend(["-d", "500ms"]);
            }
            args.extend(["--", program, files]);
            let t = trace_to_file(&format!("closer-{engine}-{detach}-trace"), &args);
            let what = t.what(&format!("{engine} detach={detach}"));
            assert_eq!((t.code, t.stdout.as_str()), (Some(0), "fds 3 4 5 sizes 15 sum 1560\n"), "{what}");
            for k in 0..3 {
                assert_eq!(std::fs::read(format!("{files}.{k}")).unwrap(), b"data\n", "{what}");
            }
            // The close took nothing of dprobe's: the program stays traced.
            assert!(!t.trace.contains("the agent's connection ended"), "{what}");
            if !detach {
                assert_eq!(common::hits(&t.trace, &probe), 40, "{what}");
            }
        }
    }
}

const FORKER: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
/* This process's descriptors that name a socket or a file of /proc (but the listing's own). */
static int foreign(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; (e = readdir(d));) {
        char path[300], to[256];
        if (atoi(e->d_name) == dirfd(d)) continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, to, sizeof to - 1);
        if (k > 0 && (to[k] = 0, !strncmp(to, "socket:", 7) || !strncmp(to, "/proc/", 6))) n++;
    }
    closedir(d);
    return n;
}
int main(void) {
    long s = 0;
    for (int i = 0; i < 10; i++) { s += work(i); usleep(20000); }
    printf("parent %d\n", foreign());
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        printf("child %d\n", foreign());
        fflush(stdout);
        _exit(work(1) == 2 ? 0 : 1);
    }
    int status;
    waitpid(child, &status, 0);
    printf("sum %ld, child %d\n", s, status);
    return 0;
}
"#;

/// A program traced by the agent, and the child it forks, find none of the agent's descriptors
/// among theirs (the child's own agent thread included).
#[test]
fn neither_a_traced_program_nor_its_forked_child_holds_the_agents_descriptors() {
    let program = common::c_program_from("forker", FORKER, &["-O1"]);
    let probe = format!("{}:work", program.rsplit_once('/').unwrap().1);
    for engine in ["ptrace", "agent"] {
        for follow in [false, true] {
            let mut args = vec!["--engine", engine, "-c", &probe];
            if !follow {
                args.push("--no-follow");
            }
            args.extend(["--", program]);
            let t = trace_to_file(&format!("forker-{engine}-{follow}"), &args);
            let what = t.what(&format!("{engine} follow={follow}"));
            assert_eq!((t.code, t.stdout.as_str()), (Some(0), "parent 0\nchild 0\nsum 90, child 0\n"), "{what}");
            assert_eq!(common::hits(&t.trace, &probe), 10 + u64::from(follow), "{what}");
        }
    }
}

/// The descriptors of process `pid` and what each names.
fn descriptors(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((n, std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

/// The names of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).map(|n| n.trim().to_owned()).collect()
}

/// `dprobe trace --engine agent -d DURATION -c -p PID PROBE`, with `look` given process `pid`'s
/// descriptors every 5 ms while the agent's thread is there; what dprobe printed on stderr.
fn looked_at_through_a_session(
    pid: u32,
    duration: &str,
    probe: &str,
    mut look: impl FnMut(&[(u32, String)]),
) -> String {
    let mut dprobe = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "agent", "-d", duration, "-c", "-p", &pid.to_string(), probe])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while dprobe.try_wait().unwrap().is_none() {
        if thread_names(pid).iter().any(|n| n == "dprobe-agent") {
            look(&descriptors(pid));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::io::read_to_string(dprobe.stderr.take().unwrap()).unwrap()
}

#[test]
fn a_traced_process_holds_no_descriptor_of_the_agents_but_the_memory_file_it_is_loaded_from() {
    let probe = "ready-then-work:work";
    let (mut child, _out) = common::start_ready_then_work(1000);
    let pid = child.id();
    let before = descriptors(pid);
    // Looked at all along the agent's session: its thread, connected, places the probe and
    // counts (its socket, its `/proc/self/mem` and its maps' reads are in its own table).
    let mut looks = 0;
    let stderr = looked_at_through_a_session(pid, "1500ms", probe, |now| {
        let added: Vec<&(u32, String)> = now.iter().filter(|d| !before.contains(d)).collect();
        assert!(
            added.iter().all(|d| d.1.starts_with("/memfd:dprobe-agent")),
            "look {looks}: before {before:?}, during the session {now:?}"
        );
        looks += 1;
    });
    assert!(stderr.contains("goes on untraced") && looks > 10, "{looks} looks\n{stderr}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_process_attached_to_and_let_go_keeps_none_of_the_agents_descriptors_in_its_way() {
    let probe = "ready-then-work:work";
    let (mut child, _out) = common::start_ready_then_work(1000);
    let before = descriptors(child.id());
    let pid = child.id().to_string();
    for round in 0..2 {
        let t = trace_to_file(
            &format!("running-fds-{round}"),
            &["--engine", "agent", "-d", "300ms", "-c", "-p", &pid, probe],
        );
        assert!(t.trace.contains("goes on untraced"), "{}", t.what("agent"));
        let after = descriptors(child.id());
        let added: Vec<&(u32, String)> = after.iter().filter(|d| !before.contains(d)).collect();
        // The memory file the agent is loaded from (loaded again from it next time), high.
        assert!(
            added.len() == 1 && added[0].0 >= 900 && added[0].1.starts_with("/memfd:dprobe-agent"),
            "round {round}: before {before:?}, after {after:?}"
        );
        assert!(before.iter().all(|d| after.contains(d)), "round {round}: before {before:?}, after {after:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Refuses `unshare` (`EPERM`) to every thread from then on, through a seccomp filter that
/// allows every other call, then prints `ready` and calls `work` every millisecond until its
/// standard input is closed; then prints the calls made and their sum.
const REFUSES_UNSHARE: &str = r#"
#include <errno.h>
#include <poll.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
__attribute__((noinline)) int work(int x) { return x * 2; }
int main(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
        return 2;
    printf("ready\n");
    fflush(stdout);
    long s = 0, i = 0;
    for (struct pollfd p = { 0, POLLIN, 0 }; poll(&p, 1, 0) == 0; i++) { s += work(i); usleep(1000); }
    printf("%ld %ld\n", i, s);
    return 0;
}
"#;

/// A process under a seccomp filter of its own is not given the agent, asked for or not: the
/// agent's thread would run under the filter, which may forbid its system calls or kill the
/// process for them (one refusing `unshare` only would have the agent share the program's
/// descriptor table; one that kills, the program). Nothing is placed in it: no descriptor, and
/// its result is its own. The default engine traces it with ptrace.
#[test]
fn a_process_under_a_seccomp_filter_of_its_own_is_refused_the_agent_and_left_as_it_was() {
    use std::io::BufRead;
    let program = common::c_program_from("refuses-unshare", REFUSES_UNSHARE, &["-O1"]);
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id();
    let before = descriptors(pid);
    let probe = "refuses-unshare:work";
    let o = common::dprobe(&["trace", "--engine", "agent", "-d", "300ms", "-c", "-p", &pid.to_string(), probe]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("process {pid} runs under a seccomp filter of its own")), "{stderr}");
    assert_eq!(descriptors(pid), before, "nothing of the agent's placed");
    let o = common::dprobe(&["trace", "-d", "300ms", "-c", "-p", &pid.to_string(), probe]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("goes on untraced") && common::hits(&stderr, probe) > 0, "{stderr}");
    drop(child.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(common::calls_and_sum_right(&rest), "{rest}");
}
