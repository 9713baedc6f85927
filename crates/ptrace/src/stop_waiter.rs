//! A thread of the tracer's that waits for a watched program to stop or end, and says so on a
//! descriptor the tracer's loop polls with its own: the loop takes the stop at once instead of
//! at its next look. A traced thread stays in its stop until the tracer takes it, and each
//! signal the program receives stops it: a loop that looked once a millisecond held every
//! signal up to a millisecond.
//!
//! The thread only peeks (`WNOWAIT`): the stop or the end stays for the tracer's own wait,
//! which continues or reaps as before. Any thread of the tracer's thread group may wait for
//! its tracees. Once it has said so, it waits for the tracer to have looked before it peeks
//! again (what it saw stays waitable until taken: it would see it again at once).
//!
//! It ends when the program is reaped (the peek fails, `ECHILD`), or when told to at its next
//! peek: its owner ends it at once where the program has something waitable (see
//! [`StopWaiter::end`]); elsewhere it ends at the program's next stop or end, or with the
//! tracer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The waiting thread, and what it says.
pub(crate) struct StopWaiter {
    /// Readable when the program has stopped or ended (an eventfd).
    said: Arc<OwnedFd>,
    /// The tracer has looked (dropped: end).
    looked: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StopWaiter {
    /// Start waiting for thread `tid` of program `pid` (a traced child, or a traced thread of
    /// one; such a thread that makes an `exec` takes the id `pid`, waited for from then on);
    /// `None` if no thread can be started (the tracer then looks on its own, as often as it
    /// does).
    pub(crate) fn start(pid: i32, tid: i32) -> Option<StopWaiter> {
        // SAFETY: creates a descriptor, owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: just created; nothing else owns it.
        let said = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (looked, has_looked) = sync_channel(1);
        let says = Arc::clone(&said);
        let thread = std::thread::Builder::new()
            .name("dprobe-waiter".into())
            .spawn(move || wait(pid, tid, &says, &has_looked))
            .ok()?;
        Some(StopWaiter { said, looked: Some(looked), thread: Some(thread) })
    }

    /// What to poll for the program's next stop or end.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.said.as_fd()
    }

    /// Whether the thread said something since the last call: then, once the program has
    /// been looked at, [`StopWaiter::looked`].
    pub(crate) fn take(&self) -> bool {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`, from our eventfd.
        unsafe { libc::read(self.said.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) == 8 }
    }

    /// The program was looked at (what the thread said was taken): it peeks again.
    pub(crate) fn looked(&self) {
        if let Some(looked) = &self.looked {
            let _ = looked.try_send(());
        }
    }

    /// End the thread and wait until it has ended, at most `limit`. For when the program has
    /// something waitable (a stop not taken yet, or its end), or was reaped: the thread's peek
    /// then returns at once. Past `limit` it is left to end on its own.
    pub(crate) fn end(mut self, limit: Duration) {
        self.looked = None;
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + limit;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let _ = thread.join();
    }
}

impl Drop for StopWaiter {
    /// Told to end: waiting for a look, it ends at once; peeking, at the program's next stop
    /// or end.
    fn drop(&mut self) {
        self.looked = None;
    }
}

/// The thread: peek at the program, say so, wait for the tracer to look; again.
fn wait(pid: i32, mut tid: i32, says: &OwnedFd, has_looked: &Receiver<()>) {
    // Every signal blocked: the tracer's signals (Ctrl-C) go to its other threads, where they
    // interrupt what they are meant to.
    // SAFETY: a sigset_t is plain data, filled by sigfillset; the mask is this thread's own.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    loop {
        if !peek(tid) {
            if tid == pid {
                return;
            }
            // Its `exec`: the thread has the process's id now.
            tid = pid;
            continue;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(says.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if has_looked.recv().is_err() {
            return;
        }
    }
}

/// Wait until program `pid` has stopped or ended, taking nothing; `false` if it is not (any
/// more) a child of ours.
fn peek(pid: i32) -> bool {
    loop {
        // SAFETY: a siginfo_t is plain data, which waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WALL;
        // SAFETY: waits without reaping; `info` is valid for the call.
        if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    fn readable(waiter: &StopWaiter, ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: waiter.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    fn signal(pid: i32, signal: i32) {
        // SAFETY: kill has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// A child that stops: said once, not again until looked at; its stop is left for its
    /// parent's own wait; reaped, the thread ends.
    #[test]
    fn says_each_stop_once_takes_nothing_and_ends_when_the_child_is_reaped() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let waiter = StopWaiter::start(pid, pid).unwrap();
        assert!(!readable(&waiter, 50), "running: nothing to say");
        signal(pid, libc::SIGSTOP);
        assert!(readable(&waiter, 10_000), "stopped: said");
        assert!(waiter.take());
        assert!(!waiter.take(), "said once");
        // The stop is still there for the parent's wait.
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is valid.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED | libc::WNOHANG) }, pid);
        assert!(libc::WIFSTOPPED(status));
        waiter.looked();
        assert!(!readable(&waiter, 50), "the stop was taken: nothing new");
        signal(pid, libc::SIGKILL);
        assert!(readable(&waiter, 10_000), "ended: said");
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let thread = waiter.thread.as_ref().unwrap();
        waiter.looked();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(thread.is_finished(), "the child was reaped: the thread ended on its own");
    }

    /// Dropped while the child runs on, the thread ends at the child's next stop or end.
    #[test]
    fn dropped_it_ends_at_the_childs_next_end() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let mut waiter = StopWaiter::start(pid, pid).unwrap();
        let thread = waiter.thread.take().unwrap();
        drop(waiter);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!thread.is_finished(), "peeking at a running child");
        signal(pid, libc::SIGKILL);
        thread.join().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL), "left for the parent to reap");
    }
}
