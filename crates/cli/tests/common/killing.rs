//! `kill -9` of dprobe at moments spread over its startup, its placing of probes and its
//! steady state: what the tests of dprobe's death share.
//!
//! dprobe is started in a process group of its own, and the test process is a child
//! subreaper: once dprobe is killed, the process that traces for it (and a command it
//! started) become the test's children, waited for here, so that a test knows when the
//! tracing has ended and with what status the command did.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where in dprobe's life a kill comes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Moment {
    /// Right after it starts (before or while it starts or attaches the program).
    Startup,
    /// Once the program is traced (probes being placed, or just placed).
    Placing,
    /// Once events come.
    Steady,
}

impl Moment {
    /// The moment of try `i`: the three in turn.
    pub fn of_try(i: u32) -> Moment {
        [Moment::Startup, Moment::Placing, Moment::Steady][i as usize % 3]
    }
}

/// A small pseudo-random generator (xorshift), seeded from the clock and said, so that a
/// failing sequence of moments can be named.
pub struct Moments(u64);

impl Moments {
    pub fn new() -> Moments {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("kill moments: seed {seed}");
        Moments(seed)
    }

    /// A delay below `max`.
    pub fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(self.0 % max.as_micros() as u64)
    }
}

/// Make the test process the reaper of its orphaned descendants.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
}

/// `dprobe ARGS` in a process group of its own, its events and summary in `out`, its
/// standard error in `err`.
pub fn start_dprobe(args: &[&str], out: &Path, err: &Path) -> u32 {
    let mut all = vec!["trace", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(&all)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap();
    // Waited for by its process group (kill_and_reap), not through `Child`.
    let pid = child.id();
    std::mem::forget(child);
    pid
}

/// [`start_dprobe`] with `-v`, returned once it says it traces (its probes are live).
pub fn start_dprobe_tracing(args: &[&str], out: &Path, err: &Path) -> u32 {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let dprobe = start_dprobe(&all, out, err);
    wait_until("dprobe tracing", || std::fs::read_to_string(err).unwrap_or_default().contains("dprobe: tracing"));
    dprobe
}

/// Wait until `done`; the deadline only keeps a broken run from hanging.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A process that ended: its name and how.
#[derive(Debug)]
pub struct Ended {
    pub pid: i32,
    pub name: String,
    pub status: i32,
}

impl Ended {
    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
}

/// Kill dprobe (`SIGKILL`), then wait for every process of its group to end (dprobe, the
/// process that traced for it, a command it started); returns them.
pub fn kill_and_reap(dprobe: u32) -> Vec<Ended> {
    let group = dprobe as i32;
    // SAFETY: kills the dprobe this test started.
    assert_eq!(unsafe { libc::kill(group, libc::SIGKILL) }, 0);
    let mut ended = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // SAFETY: a siginfo_t is plain data, filled by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits (without reaping) for a child of the group; `info` is valid.
        let r = unsafe {
            libc::waitid(libc::P_PGID, group as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT | libc::WNOHANG)
        };
        if r != 0 {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ECHILD), "waitid");
            return ended;
        }
        // SAFETY: waitid filled a child's exit.
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            assert!(Instant::now() < deadline, "dprobe's processes did not end: {ended:?}");
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        // A zombie keeps its name until it is reaped.
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned();
        let mut status = 0;
        // SAFETY: reaps that child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        ended.push(Ended { pid, name, status });
    }
}

/// Whether process `pid` is traced (by anyone).
pub fn traced(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
}
