//! Process and thread ids the agent reports, as dprobe's pid namespace numbers them.
//!
//! The agent reads its ids inside the program (`getpid`, `gettid`): in a pid namespace of its
//! own (a container, `unshare --pid --fork`), those are the namespace's numbers, and the same
//! numbers name other processes in dprobe's namespace (1 is its `init`). A thread that asks
//! before its `exec` (`exec_gate.rs`) is seized by its id: one taken as it was reported would
//! seize a process dprobe does not trace. So each id is looked up among the processes dprobe
//! traces: the last id of a thread's `NSpid` line (in `/proc/PID/task/TID/status`) is the one
//! it has in its innermost namespace, the one it reported; the directory's name is dprobe's.

use std::fs;

/// The most generations below a traced program searched for a child that asked.
const DEPTH: usize = 16;

/// dprobe's id of the thread of process `pid` (dprobe's id) that knows itself as `tid`.
pub(super) fn thread_of(pid: i32, tid: i32) -> Option<i32> {
    if innermost_id(&format!("/proc/{pid}/task/{tid}/status")) == Some(tid) {
        return Some(tid);
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| innermost_id(&format!("/proc/{pid}/task/{t}/status")) == Some(tid))
}

/// dprobe's ids of the process below `ancestor` (dprobe's id) that knows itself as `pid`, and
/// of its thread that knows itself as `tid`: found among `ancestor`'s descendants only, and
/// only where one of them is that process.
pub(super) fn descendant_thread(ancestor: i32, pid: i32, tid: i32) -> Option<(i32, i32)> {
    // Where the child's ids are dprobe's too (no namespace between them): one look. (A child
    // in a namespace of its own that numbers itself as that process is numbered by dprobe is
    // not looked for then.)
    let own = innermost_id(&format!("/proc/{pid}/status")) == Some(pid) && descends_from(pid, ancestor);
    let found = match own {
        true => pid,
        false => {
            let mut matching =
                descendants(ancestor).into_iter().filter(|&d| innermost_id(&format!("/proc/{d}/status")) == Some(pid));
            let first = matching.next()?;
            // Two processes that say the same (in two namespaces): neither is taken.
            if matching.next().is_some() {
                return None;
            }
            first
        }
    };
    Some((found, thread_of(found, tid)?))
}

/// The last id of the `NSpid` line of the `status` file at `path`: the id the process or
/// thread has in its own pid namespace.
fn innermost_id(path: &str) -> Option<i32> {
    let status = fs::read_to_string(path).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Whether `ancestor` is process `pid`'s parent, or its parent's, and so on.
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut at = pid;
    for _ in 0..DEPTH {
        let Some(parent) = parent_of(at) else { return false };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        at = parent;
    }
    false
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()
}

/// The descendants of process `ancestor`, [`DEPTH`] generations down at most.
fn descendants(ancestor: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut generation = vec![ancestor];
    for _ in 0..DEPTH {
        let children: Vec<i32> = generation.iter().flat_map(|&p| children_of(p)).collect();
        if children.is_empty() {
            break;
        }
        found.extend_from_slice(&children);
        generation = children;
    }
    found
}

/// The children of process `pid` (forked by any of its threads).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let listed = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(listed.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_dprobe_s_namespace_are_their_own() {
        let pid = std::process::id() as i32;
        // SAFETY: gettid takes no argument.
        let tid = unsafe { libc::gettid() };
        assert_eq!(thread_of(pid, tid), Some(tid));
        assert_eq!(thread_of(pid, pid), Some(pid));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let c = child.id() as i32;
        assert_eq!(descendant_thread(pid, c, c), Some((c, c)));
        // Not a descendant: refused, whatever its ids.
        assert_eq!(descendant_thread(c, pid, pid), None);
        // Init is nobody's descendant.
        assert_eq!(descendant_thread(pid, 1, 1), None);
        // A thread another process has is not this one's.
        assert_eq!(thread_of(pid, c), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
