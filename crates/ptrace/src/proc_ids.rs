//! What `/proc` says of a process's place among the others: its thread group, its parent,
//! whether it descends from this process, its seccomp mode, and its threads.

/// The threads of process `pid`, its first thread first, then by id.
pub fn thread_ids(pid: i32) -> std::io::Result<Vec<i32>> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_by_key(|t| (*t != pid, *t));
    Ok(tids)
}

/// The process thread `tid` belongs to (its thread group: `tid` itself for a process's first
/// thread, whose id `/proc` answers to for every thread).
pub(crate) fn thread_group_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()
}

/// The parent of process `pid`.
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` descends from this one (its parents, up to `init`).
pub fn descends_from_this_process(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..256 {
        match parent_of(p) {
            Some(parent) if parent == me => return true,
            Some(parent) if parent > 1 => p = parent,
            _ => return false,
        }
    }
    false
}

/// The seccomp mode and, where the kernel says, how many filters the thread has whose
/// `status` file is `path` (`/proc/PID/status`: the process's first thread's).
pub fn seccomp_status(path: &str) -> Option<(u32, Option<u32>)> {
    let status = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name))?.trim().parse::<u32>().ok();
    Some((field("Seccomp:")?, field("Seccomp_filters:")))
}
