//! Whether the program's own threads have all ended, the agent's alone left.
//!
//! A process ends when its last thread does. A program whose first thread leaves with
//! `pthread_exit` (or the `exit` system call, as after `SECCOMP_MODE_STRICT`) ends when its
//! other threads have: the agent's thread is one, and waits for dprobe for ever. So the agent's
//! thread looks now and then, and leaves once nothing of the program's runs: the process then
//! ends as it would untraced (its status the first thread's, which the kernel keeps).
//!
//! `/proc/self`'s names are used, not `getpid`'s: in a pid namespace whose `/proc` is another
//! namespace's, the two differ.

use std::fs;

/// Whether every thread of this process but the calling one has ended. The first thread is
/// looked at first: while it runs (nearly always), one read.
pub(crate) fn program_gone() -> bool {
    let (Some(process), Some(own)) = (own_id("/proc/self"), own_id("/proc/thread-self")) else { return false };
    if process != own && !ended(process) {
        return false;
    }
    let Ok(tasks) = fs::read_dir("/proc/self/task") else { return false };
    let mut tids = Vec::new();
    for task in tasks {
        let Ok(task) = task else { return false };
        tids.extend(task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()));
    }
    tids.into_iter().filter(|&t| t != own).all(ended)
}

/// The last number of the link at `path` (`/proc/self` -> `PID`, `/proc/thread-self` ->
/// `PID/task/TID`).
fn own_id(path: &str) -> Option<u32> {
    fs::read_link(path).ok()?.file_name()?.to_str()?.parse().ok()
}

/// Whether thread `tid` of this process has ended: gone, or a zombie (a first thread that
/// left stays one until the last thread does).
fn ended(tid: u32) -> bool {
    // Only a thread that is not there (any other error, out of descriptors say, is no answer).
    let stat = match fs::read_to_string(format!("/proc/self/task/{tid}/stat")) {
        Ok(stat) => stat,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH),
    };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('Z' | 'X' | 'x') | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_other_threads_run_is_not_gone() {
        // The test harness's main thread waits for this one.
        assert!(!program_gone());
        let (tell, told) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || told.recv());
        assert!(!program_gone());
        tell.send(()).unwrap();
        let _ = other.join();
        assert!(!ended(own_id("/proc/self").unwrap()));
        assert!(ended(u32::MAX - 1), "a thread that is not there has ended");
    }
}
