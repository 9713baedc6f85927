//! Whether a thread of a process blocks `SIGTRAP`: the trap of a probe on `int3` is a signal
//! the kernel forces on the thread, and a forced signal the thread blocks kills the program.
//! The ptrace engine takes its traps as the tracer, before that; the agent takes them in the
//! program, so it is not used for a process with such a thread, nor keeps `SIGTRAP` open in
//! the masks of one (`dprobe_inproc::keep_traps_open`) where a thread blocks it already.
//!
//! A mask is read from `/proc/PID/task/TID/status` a few times: a thread counts once it blocks
//! `SIGTRAP` in a few looks in a row (`pthread_create` blocks every signal in the creating
//! thread for a moment). A thread the C library is still starting is waited for: it blocks
//! every signal until it first runs, then takes the mask of the thread that created it (on a
//! loaded machine some milliseconds later), and a worker may block every signal itself as
//! soon as it runs. One that still looks so after [`LOOKS`] looks (its mask set so with a raw
//! `rt_sigprocmask`) counts.

use std::collections::BTreeMap;
use std::time::Duration;

/// The most looks, [`APART`] apart.
const LOOKS: u32 = 100;
const APART: Duration = Duration::from_millis(3);
/// Looks in a row in which a thread blocks `SIGTRAP` for it to count.
const IN_A_ROW: u32 = 3;

/// Whether `blocked` (a thread's blocked signals, signal N at bit N-1) is the mask the C
/// library gives a thread it is creating until the thread starts: every signal, the library's
/// own two (32 and 33, for cancellation and `setuid`) among them. A mask the program sets
/// through the C library never holds those (`pthread_sigmask` and `sigfillset` leave them out).
pub fn starting_thread(blocked: u64) -> bool {
    let internal = (1 << 31) | (1 << 32);
    blocked & internal == internal
}

/// A thread of process `pid` that blocks `SIGTRAP` (see the module's comment), if any; an
/// error if its threads cannot be read.
pub fn thread_blocking_traps(pid: u32) -> std::io::Result<Option<u32>> {
    // By thread: looks in a row in which it blocked `SIGTRAP`, and in which it was starting.
    let mut seen: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for _ in 0..LOOKS {
        let now = blocking_now(pid)?;
        seen.retain(|tid, _| now.iter().any(|(t, _)| t == tid));
        for (tid, blocked) in now {
            let (settled, starting) = seen.entry(tid).or_default();
            if starting_thread(blocked) {
                (*settled, *starting) = (0, *starting + 1);
            } else {
                *settled += 1;
            }
        }
        if let Some((tid, _)) = seen.iter().find(|(_, (settled, _))| *settled >= IN_A_ROW) {
            return Ok(Some(*tid));
        }
        if seen.is_empty() {
            return Ok(None);
        }
        std::thread::sleep(APART);
    }
    Ok(seen.keys().next().copied())
}

/// The threads of `pid` that block `SIGTRAP` now, with their masks (a thread gone meanwhile
/// blocks nothing; an agent's thread that is ending runs no code that could trap).
fn blocking_now(pid: u32) -> std::io::Result<Vec<(u32, u64)>> {
    let trap = 1u64 << (libc::SIGTRAP - 1);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
    Ok(tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let name = status.lines().find_map(|l| l.strip_prefix("Name:")).map(str::trim);
            if name.map(str::as_bytes) == Some(crate::agent_thread::ENDED_NAME.to_bytes()) {
                return None;
            }
            let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
            let blocked = u64::from_str_radix(blocked.trim(), 16).ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            (blocked & trap != 0).then_some((tid, blocked))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked signals of the calling thread, as the kernel shows them.
    fn blocked_now() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim(), 16).unwrap()
    }

    /// In a new thread: block every signal the C library lets a program block, then run `f`.
    fn with_every_signal_blocked<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: blocks signals in this new thread only.
                unsafe {
                    let mut all: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut all);
                    assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()), 0);
                }
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn a_mask_the_program_sets_is_never_that_of_a_starting_thread() {
        let every_signal = with_every_signal_blocked(blocked_now);
        assert!(every_signal & (1 << (libc::SIGTRAP - 1)) != 0);
        assert!(!starting_thread(every_signal), "{every_signal:x}");
        // What the kernel shows for a thread the C library is creating: every signal but the
        // two that cannot be blocked.
        let unblockable: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));
        assert!(starting_thread(!unblockable));
    }

    #[test]
    fn a_thread_that_blocks_every_signal_is_found_and_one_that_stops_is_not() {
        let me = std::process::id();
        let (found, tid) = with_every_signal_blocked(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            (thread_blocking_traps(me).unwrap(), tid)
        });
        assert_eq!(found, Some(tid));
        // That thread is gone, and no other blocks `SIGTRAP` (the test harness's threads
        // block nothing).
        assert_eq!(thread_blocking_traps(me).unwrap(), None);
    }
}
