//! How a process that is neither our child nor our tracee ended: `wait` tells only its parent
//! (and its tracer, which the agent and the kernel engine are not). Two places still know, both
//! read through a pidfd opened while it ran, which names this process and no later one given
//! the same number:
//!
//! - once its parent has reaped it, the pidfd's own record of its end (`PIDFD_GET_INFO` with
//!   `PIDFD_INFO_EXIT`, Linux 6.15);
//! - before that, while it is a zombie, the exit code in its `/proc/PID/stat` (Linux 3.5),
//!   read while a signal 0 through the pidfd still finds it (`ESRCH` once it is reaped), so
//!   that the entry read is its own.
//!
//! Where neither answers (an older kernel, the process reaped between the two reads), only its
//! parent can tell. Both report the main thread's own exit code: a process whose main thread
//! ended first (`pthread_exit`) and whose last thread then exited with another status reads
//! as the main thread's status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Exit;

/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)`, of the 72-byte structure below.
const PIDFD_GET_INFO: libc::c_ulong = 0xc048_ff0b;
/// `PIDFD_INFO_EXIT`: ask for (and, in the answer, have) the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// `struct pidfd_info` (`linux/pidfd.h`, its second version): what is asked in `mask`, and
/// what the kernel answered in it.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
    coredump_mask: u32,
    spare: u32,
}

const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 72);

/// A process watched for how it ends.
pub struct ProcessEnd {
    pid: i32,
    pidfd: OwnedFd,
}

impl ProcessEnd {
    /// Watch process `pid` (to be called before it may end); `None` where it cannot be opened
    /// (gone already, or a kernel before 5.3).
    pub fn watch(pid: i32) -> Option<ProcessEnd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a descriptor just made, owned by nothing else.
        (fd >= 0).then(|| ProcessEnd { pid, pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// How it ended, if it has and that can be known (see the module's comment).
    pub fn how_it_ended(&self) -> Option<Exit> {
        self.status().map(|status| match libc::WIFSIGNALED(status) {
            true => Exit::Signal(libc::WTERMSIG(status)),
            false => Exit::Code(libc::WEXITSTATUS(status)),
        })
    }

    /// Its wait status: the kernel's record once reaped; before, the zombie's, read while a
    /// signal 0 still finds it afterwards (reaping cannot be undone, so the entry read was its
    /// own); else the record again, for a process reaped between the reads.
    fn status(&self) -> Option<i32> {
        recorded_end(&self.pidfd)
            .or_else(|| zombie_exit_code(self.pid).filter(|_| unreaped(&self.pidfd)))
            .or_else(|| recorded_end(&self.pidfd))
    }
}

/// The wait status the pidfd recorded when its process was reaped, if it was and the kernel
/// records it.
fn recorded_end(pidfd: &OwnedFd) -> Option<i32> {
    let mut info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..PidfdInfo::default() };
    // SAFETY: the ioctl fills at most the structure's size, which its number encodes.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
    (r == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// Whether the pidfd's process has not been reaped: a signal 0 sent through it still finds
/// it (a zombie included).
fn unreaped(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks that the process is there; no siginfo, no flags.
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0) == 0
    }
}

/// The wait status of process `pid` if it is a zombie: the last field of its `stat`.
fn zombie_exit_code(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields from the third (the state): the exit code is the 52nd.
    (fields.first() == Some(&"Z")).then(|| fields.get(52 - 3)?.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of this test, killed: while it is a zombie its `stat` says how, and once reaped
    /// (by this test, its parent) the pidfd does, where the kernel records it.
    #[test]
    fn a_killed_process_reads_as_killed_before_and_after_it_is_reaped() {
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        // SAFETY: as in `watch`.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0);
        // SAFETY: as in `watch`.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        assert!(unreaped(&pidfd) && zombie_exit_code(pid).is_none(), "running, not a zombie");
        child.kill().unwrap();
        let zombie = (0..500).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            zombie_exit_code(pid)
        });
        assert_eq!(zombie, Some(libc::SIGKILL));
        assert!(unreaped(&pidfd));
        child.wait().unwrap();
        assert!(!unreaped(&pidfd));
        if let Some(status) = recorded_end(&pidfd) {
            assert_eq!(status, libc::SIGKILL);
        }
    }
}
