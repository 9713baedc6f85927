//! Waiting for a stopped dprobe to end, for as long as it gets on with ending: what the tests
//! that stop dprobe at many moments share.
//!
//! On a heavily loaded machine each step of dprobe's startup and of its cleanup (defining a
//! kernel event, loading a BPF program, removing a uprobe after a grace period, attaching to a
//! thread) can take seconds, and a whole run far longer than any fixed bound. So the wait has
//! no bound on the run: it fails only when nothing moved for a minute, and then says where
//! each of dprobe's threads waits. What moves while dprobe starts or ends: its processes and
//! threads come and go, it opens and closes descriptors (perf events, BPF maps and programs,
//! tracefs files), the kernel's dynamic events it defines and removes, and the watched
//! program's tracer and mappings. Only a state not seen before in the wait counts: a dprobe
//! still tracing after the signal (the failure this wait exists for) keeps its events and
//! descriptors, or goes back and forth between the same few (a file it opens now and then).
#![allow(dead_code)]

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// The program a test traces; killed if the test fails before it finishes it.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long nothing may move before the wait fails.
const STILL_FOR: Duration = Duration::from_secs(60);

/// Wait for `dprobe` (as started: its front process) to end. `watched`: the traced program,
/// whose tracer and mappings dprobe changes while it attaches and detaches.
pub fn wait_while_it_moves(dprobe: &mut Child, watched: Option<i32>, what: &str) -> ExitStatus {
    let mut seen = std::collections::HashSet::new();
    let mut since = Instant::now();
    loop {
        if let Some(status) = dprobe.try_wait().unwrap() {
            return status;
        }
        if seen.insert(snapshot(dprobe.id(), watched)) {
            since = Instant::now();
        } else if since.elapsed() > STILL_FOR {
            let report = threads_report(dprobe.id());
            let _ = dprobe.kill();
            let _ = dprobe.wait();
            panic!("{what}: dprobe did not end, and nothing of it moved for {STILL_FOR:?}; its threads:\n{report}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What changes while dprobe starts and ends (see the module's comment).
fn snapshot(front: u32, watched: Option<i32>) -> Vec<String> {
    let mut seen = Vec::new();
    for pid in family(front) {
        let tasks = names_in(&format!("/proc/{pid}/task"));
        let fds = names_in(&format!("/proc/{pid}/fd"));
        seen.push(format!("{pid}: tasks {tasks:?}, {} descriptors", fds.len()));
    }
    for file in ["uprobe_events", "kprobe_events"] {
        seen.push(
            std::fs::read_to_string(format!("{}/{file}", dprobe_test_fixtures::tracing_dir())).unwrap_or_default(),
        );
    }
    if let Some(pid) = watched {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        seen.extend(status.lines().filter(|l| l.starts_with("TracerPid:")).map(str::to_owned));
        seen.push(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default());
    }
    seen
}

/// `front` and its descendants (dprobe's tracing process, a command it started).
pub fn family(front: u32) -> Vec<u32> {
    let mut all = vec![front];
    let mut i = 0;
    while i < all.len() {
        let pid = all[i];
        for task in names_in(&format!("/proc/{pid}/task")) {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/children")).unwrap_or_default();
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

/// The entries of a /proc directory, sorted (none if it is gone).
fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Each thread of dprobe's processes: its name, state, where it waits and its kernel stack.
fn threads_report(front: u32) -> String {
    let mut report = String::new();
    for pid in family(front) {
        for tid in names_in(&format!("/proc/{pid}/task")) {
            let read =
                |file: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}")).unwrap_or_default();
            let stat = read("stat");
            let state = stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]);
            report.push_str(&format!("  {pid}/{tid} {} {state} in {}\n", read("comm").trim(), read("wchan")));
            for frame in read("stack").lines().take(12) {
                report.push_str(&format!("      {frame}\n"));
            }
        }
    }
    report
}
