//! Processes that share a process's memory without being its threads: children made with
//! `clone(CLONE_VM)` and no `CLONE_THREAD` (an old threads library's "thread", a runtime's
//! helper, a `vfork` child until it executes). dprobe writes its probes into that memory, and
//! such a process, which dprobe does not trace when it attaches, would meet them: killed by
//! their `SIGTRAP` (a `-p` attach killed such a child every time, under either engine; one to
//! the child killed its parent). They are found among the process's children
//! (`/proc/PID/task/TID/children`), its parent and its parent's children, by comparing address
//! spaces (`kcmp(KCMP_VM)`), and the attach is refused while one lives. A `vfork` child, which
//! executes or exits within moments, is waited for a little first.

use std::time::{Duration, Instant};

/// `KCMP_VM` of `<linux/kcmp.h>`.
const KCMP_VM: libc::c_long = 1;
/// How long children sharing the memory are waited for to execute or end.
const PATIENCE: Duration = Duration::from_millis(300);

/// The processes that share process `pid`'s memory and are not its threads, among its
/// children, its parent and its parent's children.
fn memory_sharers(pid: i32) -> Vec<i32> {
    let parent = parent_of(pid).filter(|&p| p > 1);
    let mut near: Vec<i32> = children_of(pid);
    if let Some(p) = parent {
        near.push(p);
        near.extend(children_of(p));
    }
    let mut sharers: Vec<i32> = near.into_iter().filter(|&other| other != pid && same_memory(pid, other)).collect();
    sharers.sort_unstable();
    sharers.dedup();
    sharers
}

/// The children of every thread of process `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let lists = tasks.filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok());
    lists.flat_map(|list| list.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<i32>>()).collect()
}

/// The parent of process `pid`.
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Whether processes `a` and `b` share one address space.
fn same_memory(a: i32, b: i32) -> bool {
    // SAFETY: `kcmp` only compares two processes' kernel objects; it reads no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a as libc::c_long, b as libc::c_long, KCMP_VM, 0, 0) };
    r == 0
}

/// Why dprobe does not attach to process `pid`, where a process that is not one of its
/// threads shares its memory (see the module's comment), after a short wait for such a
/// child to execute or end.
pub fn shared_memory_refusal(pid: i32) -> Option<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sharers = memory_sharers(pid);
        let &first = sharers.first()?;
        if Instant::now() >= deadline {
            return Some(format!(
                "process {first} shares process {pid}'s memory without being one of its threads (made with \
                 `clone(CLONE_VM)`): dprobe's probes there would kill it, untraced"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
