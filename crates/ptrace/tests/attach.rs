//! Attaching to a running program and letting it go: every thread traced, then the code,
//! the stacks and the address space as they were, and the program finishing with the result
//! it computes untraced.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{counter, read_mem, target};
use dprobe_ptrace::{ProbeDef, Stopped, Tracee};
use std::sync::atomic::Ordering::Relaxed;

/// Kills the untraced target if a test fails before it finishes it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signals a child of this test (already reaped is harmless: ESRCH).
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Wait until the target's four workers run (it installs its signal handlers before it
/// starts them), however long that takes on a loaded machine.
fn wait_for_workers(pid: i32) {
    while std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[test]
fn attach_trace_every_thread_and_detach_with_returns_pending() {
    let mut child =
        Command::new(target()).arg("until-usr2").stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let pid = child.id() as i32;
    wait_for_workers(pid);
    // Every worker is inside `until_told`: each counted 1000 calls there (the program says so).
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "1000 calls each\n");
    let maps_before = maps(pid);
    let mut t = Tracee::attach(pid).unwrap();
    let (entries, h) = counter();
    let (returns, r) = counter();
    let (workers, w) = counter();
    let probed = t.resolve("probed").unwrap();
    let pair = t.resolve("pair").unwrap();
    let original = (read_mem(pid, probed.0, 16), read_mem(pid, pair.0, 16));
    t.add_probe("probed", h).unwrap();
    // `pair` returns constantly; `until_told` (each worker's start function) never returns
    // while traced: its hijacked return address must be put back at detach.
    t.add(ProbeDef::on_return("pair", r)).unwrap();
    let until = t.add(ProbeDef::on_return("until_told", w)).unwrap();
    // The same through return stubs, on another function the workers are in: `probed_push`.
    let (stubbed, s) = counter();
    t.add(ProbeDef::on_return("probed_push", s).no_return_stop()).unwrap();
    let mut rounds = 0;
    assert_eq!(
        t.run_until(&mut || {
            rounds += 1;
            rounds > 20_000
        })
        .unwrap(),
        Stopped::Asked
    );
    assert!(entries.load(Relaxed) > 1000 && returns.load(Relaxed) > 1000 && stubbed.load(Relaxed) > 1000);
    assert_eq!(t.stats(until).hits, 0, "the workers were already inside it");
    assert_eq!(workers.load(Relaxed), 0);
    t.detach().unwrap();
    assert_eq!((read_mem(pid, probed.0, 16), read_mem(pid, pair.0, 16)), original, "original code");
    assert_eq!(maps(pid), maps_before, "the out-of-line page is gone");
    std::thread::sleep(Duration::from_millis(100)); // untraced, still checking every result
                                                    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "it finished with the results it computes untraced");
}

#[test]
fn attaching_to_a_missing_or_traced_process_says_why() {
    let e = Tracee::attach(999_999_999).err().expect("no such process");
    assert_eq!(e.to_string(), "cannot trace process 999999999: no such process");
    let mut child = Command::new(target()).arg("until-usr2").spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let pid = child.id() as i32;
    wait_for_workers(pid);
    let first = Tracee::attach(pid).unwrap();
    // A second tracer (another thread, as ptrace sees tracers per thread).
    let e = std::thread::spawn(move || Tracee::attach(pid).err().expect("already traced").to_string()).join().unwrap();
    assert!(e.contains("already traced by process"), "{e}");
    first.detach().unwrap();
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_stopped_program_stays_stopped_while_traced_and_after() {
    let mut child = Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let pid = child.id() as i32;
    wait_for_workers(pid);
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(") ").next().unwrap().chars().next().unwrap()
    };
    while state() != 'T' {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut t = Tracee::attach(pid).unwrap();
    let (hits, h) = counter();
    t.add_probe("probed", h).unwrap();
    assert_eq!(t.run_for(Duration::from_millis(300)).unwrap(), None);
    assert_eq!(hits.load(Relaxed), 0, "a stopped program runs no code");
    t.detach().unwrap();
    // Each thread the detach woke stops again (group stop) once it runs: on a busy machine,
    // not at once.
    let states = || -> String {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| {
                let stat = std::fs::read_to_string(e.unwrap().path().join("stat")).unwrap();
                stat.rsplit(") ").next().unwrap().chars().next().unwrap()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !states().chars().all(|c| c == 'T') && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let states = states();
    assert!(states.chars().all(|c| c == 'T'), "every thread still stopped after detach: {states}");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_breakpoint_something_else_removes_is_put_back_and_counted() {
    let mut child = Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let pid = child.id() as i32;
    wait_for_workers(pid);
    let mut t = Tracee::attach(pid).unwrap();
    let at = t.resolve("probed").unwrap();
    let original = read_mem(pid, at.0, 1);
    let (hits, h) = counter();
    let p = t.add_probe("probed", h).unwrap();
    while hits.load(Relaxed) == 0 {
        assert_eq!(t.run_for(Duration::from_millis(10)).unwrap(), None);
    }
    // What the kernel does when a uprobe on the same instruction is removed: the original
    // instruction written back over dprobe's int3.
    write_mem(pid, at.0, &original);
    // Looked for every 100 ms: waited for as long as a busy machine makes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while t.stats(p).rearmed == 0 && std::time::Instant::now() < deadline {
        assert_eq!(t.run_for(Duration::from_millis(50)).unwrap(), None);
    }
    assert_eq!(t.run_for(Duration::from_millis(50)).unwrap(), None);
    assert_eq!(t.stats(p).rearmed, 1, "seen gone once, put back");
    assert_eq!(read_mem(pid, at.0, 1), [0xcc]);
    let before = hits.load(Relaxed);
    while hits.load(Relaxed) == before && std::time::Instant::now() < deadline {
        assert_eq!(t.run_for(Duration::from_millis(10)).unwrap(), None);
    }
    assert!(hits.load(Relaxed) > before, "hits seen again");
    t.detach().unwrap();
    assert_eq!(read_mem(pid, at.0, 1), original);
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert!(child.wait().unwrap().success());
}

fn write_mem(pid: i32, addr: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).unwrap().write_all_at(data, addr).unwrap();
}
