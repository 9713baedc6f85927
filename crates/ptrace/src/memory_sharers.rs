//! Processes that share a process's memory without being its threads: children made with
//! `clone(CLONE_VM)` and no `CLONE_THREAD` (an old threads library's "thread", a runtime's
//! helper, a `vfork` child until it executes). dprobe writes its probes into that memory, and
//! such a process, which dprobe does not trace when it attaches, would meet them: killed by
//! their `SIGTRAP` (a `-p` attach killed such a child every time, under either engine; one to
//! the child killed its parent). They are found among the process's children
//! (`/proc/PID/task/TID/children`), its parent and its parent's children, by comparing address
//! spaces (`kcmp(KCMP_VM)`), and the attach is refused while one lives. A `vfork` child (its
//! parent waits in `vfork`, `clone` or `clone3`) is left to the engines' own handling of
//! those (the ptrace engine waits for its `exec`, `blocked.rs`); one just made, whose parent
//! is not asleep yet, is waited for a moment. Kernel threads, which have no memory of their
//! own to share, are not compared. Not found: such a process reparented or further down, and
//! any where `kcmp` is refused (another user's, a kernel without it).

use std::time::{Duration, Instant};

use crate::family::shares_memory;
use crate::proc_ids::thread_ids;
use crate::proc_ids::{parent_of, thread_group_of};

/// How long processes sharing the memory are looked at again (a `vfork` parent not yet asleep).
const PATIENCE: Duration = Duration::from_millis(300);

/// The processes that share process `pid`'s memory and are not its threads, among its
/// children, its parent and its parent's children.
fn memory_sharers(pid: i32) -> Vec<i32> {
    if !has_memory(pid) {
        return Vec::new();
    }
    let mut near: Vec<i32> = children_of(pid);
    if let Some(p) = parent_of(pid) {
        near.push(p);
        // (Not every process of a system: the first one's children.)
        if p > 1 {
            near.extend(children_of(p));
        }
    }
    let group = thread_group_of(pid);
    let mut sharers: Vec<i32> = near
        .into_iter()
        .filter(|&other| other != pid && thread_group_of(other) != group && has_memory(other))
        .filter(|&other| shares_memory(pid, other) == Some(true) && !vfork_pair(pid, other))
        .collect();
    sharers.sort_unstable();
    sharers.dedup();
    sharers
}

/// The children of every thread of process `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let lists = thread_ids(pid).unwrap_or_default().into_iter();
    let lists = lists.filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children")).ok());
    lists.flat_map(|list| list.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<i32>>()).collect()
}

/// Whether process `pid` has memory of its own (a kernel thread has none: `kcmp` finds every
/// two of them the same).
fn has_memory(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.lines().any(|l| l.starts_with("VmSize:")))
}

/// Whether one of processes `a` and `b` is the other's parent, waiting in `vfork` for it.
fn vfork_pair(a: i32, b: i32) -> bool {
    let waits_in_vfork = |parent: i32| {
        let tids = thread_ids(parent).unwrap_or_default();
        tids.into_iter().any(|t| crate::blocked::blocked(parent, t).is_some_and(|b| b.in_vfork))
    };
    (parent_of(b) == Some(a) && waits_in_vfork(a)) || (parent_of(a) == Some(b) && waits_in_vfork(b))
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
