//! Why a thread does not stop when the tracer asks it to: a thread asleep in the kernel where
//! only a fatal signal wakes it (a `vfork` parent waits there until its child executes a
//! program or exits; a disk or network file system may hold one too) reaches no ptrace stop
//! until it wakes. Told from `/proc`, in words for the user.

use std::time::{Duration, Instant};

/// A thread that cannot stop now.
pub(crate) struct Blocked {
    /// A `vfork` parent waiting for its child.
    pub in_vfork: bool,
    /// Which thread, and why, in words.
    pub reason: String,
}

/// Why thread `tid` of process `pid` has not stopped, when `/proc` says it cannot now;
/// `None` when it is running or in an ordinary wait (it will stop).
pub(crate) fn blocked(pid: i32, tid: i32) -> Option<Blocked> {
    let task = format!("/proc/{pid}/task/{tid}");
    let stat = std::fs::read_to_string(format!("{task}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state != "D" {
        return None;
    }
    let syscall = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    let nr: Option<i64> = syscall.split_whitespace().next().and_then(|n| n.parse().ok());
    let children = std::fs::read_to_string(format!("{task}/children")).unwrap_or_default();
    let child = children.split_whitespace().next().map(|c| format!(" {c}")).unwrap_or_default();
    let in_vfork = nr.is_some_and(|n| n == libc::SYS_vfork || n == libc::SYS_clone || n == libc::SYS_clone3);
    let reason = match nr {
        Some(_) if in_vfork => format!(
            "thread {tid} waits in vfork for its child{child} to execute a program or exit (the child shares \
             the process's memory, untraced: probes cannot be placed or removed safely until it does)"
        ),
        Some(n) => format!("thread {tid} sleeps uninterruptibly in system call {n}"),
        None => format!("thread {tid} sleeps uninterruptibly in the kernel"),
    };
    Some(Blocked { in_vfork, reason })
}

/// Before attaching: wait (up to `bound`) until no thread of process `pid` is a `vfork`
/// parent waiting for its child. Such a thread would take a ptrace interrupt only once the
/// child is done, and while the child runs it shares the process's memory untraced, where
/// probes must not be placed. `Err` names the thread and says why.
pub(crate) fn wait_out_vforks(pid: i32, tids: &[i32], bound: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let Some(b) = tids.iter().filter_map(|t| blocked(pid, *t)).find(|b| b.in_vfork) else { return Ok(()) };
        if start.elapsed() >= bound {
            return Err(format!("{} (waited {} s)", b.reason, bound.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
