//! dprobe's own death never harms the traced program.
//!
//! When a ptrace tracer dies, the kernel detaches its tracees: a thread held at a trap stop
//! gets SIGTRAP, and the `int3`s left in the code kill the program at its next hit; a
//! kernel engine's events stay defined. Nothing can be repaired after the fact, so the
//! tracing is owned by a process that outlives the one the user sees and may kill:
//! `dprobe trace` forks at once, before any thread, signal handler or change to a target.
//!
//! - The child, the *holder*, does everything: plans, starts or attaches, traces, writes
//!   the events and the summary.
//! - The parent, the *front*, keeps the PID the user knows. It waits for the holder and
//!   ends with its status (for a started command, the command's own, relayed), and passes
//!   on the stop signals a process sends it. The terminal's (Ctrl-C, a hangup) reach the
//!   holder directly, being sent to the whole foreground process group.
//! - The front holds the only writing end of a pipe the holder reads: forwarded signals
//!   come through it, and its end (the front died, `kill -9` included) tells the holder to
//!   stop as on a SIGINT sent to dprobe alone: every probe removed, every byte restored,
//!   the program let go to run on untraced.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;

use crate::signals;

/// The stop signals the front passes on.
const STOPS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Split into front and holder. Returns in the holder; the front never returns: it exits
/// with the holder's status.
pub fn split() -> io::Result<()> {
    // A stop signal dprobe was started with ignored stays ignored (see `signals::install`):
    // the front does not pass it on.
    let ignored: Vec<i32> = STOPS.into_iter().filter(|&s| is_ignored(s)).collect();
    // The stop signals and SIGCHLD are held from now on in the front, which takes them
    // with sigwaitinfo (no handler, no thread): a stop signal sent at any moment is passed
    // on, never lost.
    // SAFETY: a sigset_t is plain data, initialised by sigemptyset before use.
    let mut waited: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; filled by pthread_sigmask.
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are valid and owned here; dprobe has a single thread yet.
    unsafe {
        libc::sigemptyset(&mut waited);
        for s in STOPS.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut waited, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &waited, &mut before);
    }
    let restore = |set: &libc::sigset_t| {
        // SAFETY: restores the mask dprobe started with.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, std::ptr::null_mut()) };
    };
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = io::Error::last_os_error();
        restore(&before);
        return Err(e);
    }
    // SAFETY: pipe2 just returned these descriptors, owned by nothing else.
    let (reading, writing) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Taken before the fork: once the front is gone the holder's parent is whoever adopted it.
    let front_pid = std::process::id() as i32;
    // SAFETY: dprobe has a single thread (nothing has started one yet), so the child may
    // run any code.
    let holder = unsafe { libc::fork() };
    if holder < 0 {
        let e = io::Error::last_os_error();
        restore(&before);
        return Err(e);
    }
    if holder == 0 {
        // The holder: the front's end closed here (the holder's programs never get it:
        // close-on-exec), the signal mask as dprobe found it (programs started inherit it).
        drop(writing);
        restore(&before);
        watch_the_front(front_pid, reading)?;
        return Ok(());
    }
    drop(reading);
    front(holder, std::fs::File::from(writing), &waited, &ignored)
}

/// Whether `signal` is ignored now.
fn is_ignored(signal: i32) -> bool {
    // SAFETY: a sigaction is plain data, filled by the query.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: queries the disposition only (no new action).
    let queried = unsafe { libc::sigaction(signal, std::ptr::null(), &mut now) } == 0;
    queried && now.sa_sigaction == libc::SIG_IGN
}

/// The holder's thread that reads the front's pipe: signals passed on, then its end.
fn watch_the_front(front: i32, reading: OwnedFd) -> io::Result<()> {
    let mut pipe = std::fs::File::from(reading);
    std::thread::Builder::new().name("dprobe-front".into()).spawn(move || {
        let mut message = [0u8; 8];
        while pipe.read_exact(&mut message).is_ok() {
            let signal = i32::from_ne_bytes(message[..4].try_into().expect("4 bytes"));
            let sender = i32::from_ne_bytes(message[4..].try_into().expect("4 bytes"));
            signals::forwarded(signal, sender);
        }
        signals::front_ended(front);
    })?;
    Ok(())
}

/// The front: wait for the holder, pass the stop signals on, end as the holder ended.
fn front(holder: i32, mut pipe: std::fs::File, waited: &libc::sigset_t, ignored: &[i32]) -> ! {
    loop {
        // SAFETY: a siginfo_t is plain data, filled by sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set and the info are valid; the signals in the set are blocked.
        let signal = unsafe { libc::sigwaitinfo(waited, &mut info) };
        if signal == libc::SIGCHLD || signal < 0 {
            relay_if_ended(holder);
            continue;
        }
        // The terminal's signals went to the whole foreground process group, the holder
        // included: passing them on would count each twice.
        if info.si_code == libc::SI_KERNEL || ignored.contains(&signal) {
            continue;
        }
        // SAFETY: a stop signal sent by a process carries its pid.
        let sender = unsafe { info.si_pid() };
        let mut message = [0u8; 8];
        message[..4].copy_from_slice(&signal.to_ne_bytes());
        message[4..].copy_from_slice(&sender.to_ne_bytes());
        // A holder that has ended cannot be told (SIGPIPE is ignored); its status comes next.
        let _ = pipe.write_all(&message);
    }
}

/// If the holder has ended, end the same way.
fn relay_if_ended(holder: i32) {
    let mut status = 0;
    // SAFETY: waits for our own child without blocking.
    let reaped = unsafe { libc::waitpid(holder, &mut status, libc::WNOHANG) };
    if reaped != holder {
        return;
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let signal = libc::WTERMSIG(status);
    if !STOPS.contains(&signal) {
        eprintln!("dprobe: its tracing process {holder} was killed by {}", signals::signal_name(signal));
    }
    let _ = io::stderr().flush();
    // The same signal ends the front, so that whoever waits for dprobe sees it (a shell's
    // Ctrl-C that came before the holder caught the stop signals).
    // SAFETY: a set with that one signal, unblocked after its default action is restored.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::signal(signal, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal);
}
