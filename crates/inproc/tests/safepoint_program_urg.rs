//! The program's own `SIGURG`, the signal dprobe's safepoints send where the program leaves
//! it to its default or ignores it: the program's (a kernel's too, for a socket's out-of-band
//! data) leave dprobe's handler in place; a thread that keeps blocking it (and takes it with
//! `sigtimedwait`) is sent dprobe's once at most; a program that handles it keeps its handler,
//! the safepoints send the last real-time signal instead, and the program's handler takes
//! exactly its own `SIGURG`s, one pending as dprobe's signal came included.
//! (A test binary of its own, one test: its phases change the process's `SIGURG` action.)
mod fixtures;
use fixtures::{addr, call2, fx_mov_add, fx_push_add, fx_push_push_mov};

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use dprobe_inproc::{register, safepoint_signal, Kprobe, PreAction, Probe};

/// `SIGURG`s the program's handler took.
static PROGRAM_URGS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_urg(_: libc::c_int) {
    PROGRAM_URGS.fetch_add(1, SeqCst);
}

/// A probe on `f` that jumps if it can.
fn jumping(f: unsafe extern "C" fn(u64, u64) -> u64) -> Probe {
    register(Kprobe::addr(addr(f)).pre(|_| PreAction::Continue)).unwrap()
}

/// A thread that spins in user code (a thread asleep in a system call is not signalled)
/// until told to stop, `SIGURG` blocked first when `blocked`, until told to unblock it; while
/// blocked, if `takes`, it takes any `SIGURG` pending for it with `sigtimedwait` and counts it.
struct Spinner {
    tid: i32,
    stop: &'static AtomicBool,
    unblock: &'static AtomicBool,
    taken: &'static AtomicU64,
    thread: std::thread::JoinHandle<()>,
}

impl Spinner {
    fn start(blocked: bool, takes: bool) -> Spinner {
        let (stop, unblock) = (leak(AtomicBool::new(false)), leak(AtomicBool::new(false)));
        let taken = leak(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            set_blocked(blocked);
            let mut still_blocked = blocked;
            // SAFETY: gettid has no argument.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let mut spins = 0u64;
            while !stop.load(SeqCst) {
                if still_blocked && unblock.load(SeqCst) {
                    set_blocked(false);
                    still_blocked = false;
                }
                spins += 1;
                if takes && still_blocked && spins % 4096 == 0 && take_pending_urg() {
                    taken.fetch_add(1, SeqCst);
                }
                std::hint::spin_loop();
            }
        });
        Spinner { tid: rx.recv().unwrap(), stop, unblock, taken, thread }
    }

    fn end(self) {
        self.stop.store(true, SeqCst);
        self.thread.join().unwrap();
    }
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Block or unblock `SIGURG` in this thread.
fn set_blocked(blocked: bool) {
    let set = urg_set();
    let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: a valid signal set; the old mask is not asked for.
    assert_eq!(unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) }, 0);
}

fn urg_set() -> libc::sigset_t {
    // SAFETY: a zeroed set, emptied and filled with one signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGURG);
        set
    }
}

/// Take a `SIGURG` pending for this thread, if one is, with `sigtimedwait` (no wait).
fn take_pending_urg() -> bool {
    let set = urg_set();
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid set and timeout; no information asked for.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGURG }
}

/// Send `SIGURG` to thread `tid` of this process.
fn urg(tid: i32) {
    // SAFETY: a signal to a thread of this process.
    assert_eq!(unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGURG) }, 0);
}

/// Install `handler` (or `SIG_IGN`, `SIG_DFL`) for `SIGURG` through the C library.
fn program_action(handler: usize) {
    // SAFETY: a zeroed action with a handler, no flags, an empty mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        assert_eq!(libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()), 0);
    }
}

/// The program's `SIGURG` action, as the C library shows it.
fn shown_action() -> usize {
    // SAFETY: reads the action into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGURG, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

/// Out-of-band data on a loopback TCP connection whose receiving socket this process owns:
/// the kernel sends the process `SIGURG` (`si_code` `SI_KERNEL`, not a sent signal).
fn kernel_urg() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut receiver, _) = listener.accept().unwrap();
    // SAFETY: fcntl and send on sockets this function owns.
    unsafe {
        assert_eq!(libc::fcntl(receiver.as_raw_fd(), libc::F_SETOWN, libc::getpid()), 0);
        assert_eq!(libc::send(sender.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB), 1);
    }
    sender.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    receiver.read_exact(&mut byte).unwrap();
    std::thread::sleep(Duration::from_millis(20));
}

/// Place a jump that needs a safepoint while a spinner runs: the probe, whether it jumped,
/// and how long that took.
fn jump_beside(f: unsafe extern "C" fn(u64, u64) -> u64) -> (Probe, Result<(), String>, Duration) {
    let started = Instant::now();
    let p = jumping(f);
    let jumped = p.optimized().map_err(|e| e.to_string());
    (p, jumped, started.elapsed())
}

#[test]
fn the_programs_sigurg_and_dprobes_safepoints_keep_out_of_each_others_way() {
    // 0. In a child that handles SIGURG before any safepoint: dprobe leaves its handler there
    //    (dprobe's action would not have its flags: Go's runtime stops a process whose
    //    preemption signal's handler runs off the signal stack) and sends the real-time one.
    // SAFETY: the child installs a handler, makes a thread and a probe, and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        program_action(on_urg as *const () as usize);
        let spinner = Spinner::start(false, false);
        let (probe, jumped, _) = jump_beside(fx_push_push_mov);
        let kept = shown_action() == on_urg as *const () as usize;
        let code = match (jumped.is_ok(), kept, safepoint_signal() == libc::SIGRTMAX(), PROGRAM_URGS.load(SeqCst)) {
            (false, ..) => 1,
            (_, false, ..) => 2,
            (_, _, false, _) => 3,
            (.., 0) => 0,
            _ => 4,
        };
        drop(probe);
        spinner.end();
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let reasons =
        [(1, "no jump"), (2, "its handler replaced"), (3, "not the real-time signal"), (4, "dprobe's signals")];
    fixtures::child_exited_cleanly("a program that handles SIGURG", status, &reasons);

    // 1. Left to its default: the first safepoint puts dprobe's handler on SIGURG and sends
    //    it, and the program's (to a thread, to the process, from the kernel) leave dprobe's
    //    handler in place.
    let spinner = Spinner::start(false, false);
    let (first, jumped, took) = jump_beside(fx_push_push_mov);
    assert_eq!(jumped, Ok(()), "after {took:?}");
    assert_eq!(safepoint_signal(), libc::SIGURG);
    urg(spinner.tid);
    // SAFETY: a signal to this process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGURG) }, 0);
    kernel_urg();
    assert_eq!(safepoint_signal(), libc::SIGURG, "dprobe's handler still in place");
    let (second, jumped, took) = jump_beside(fx_push_add);
    assert_eq!(jumped, Ok(()), "the spinner answered the next safepoint, after {took:?}");
    assert_eq!((call2(fx_push_push_mov, 1, 2), call2(fx_push_add, 1, 2)), (16, 3));
    drop((first, second));
    spinner.end();

    // 2. A thread that blocks SIGURG and takes it with sigtimedwait: the first jump waits for
    //    it and stays on int3; the next ones find it still blocking the signal and do not
    //    send it theirs (it would take each as its own).
    let spinner = Spinner::start(true, true);
    let (deaf, jumped, _) = jump_beside(fx_push_push_mov);
    let why = jumped.unwrap_err();
    assert!(why.contains("did not take dprobe's safepoint signal") && why.contains("the signal blocked"), "{why}");
    let taken = spinner.taken.load(SeqCst);
    assert!(taken <= 1, "{taken}");
    let later: Vec<_> = [fx_push_add, fx_mov_add].into_iter().map(jump_beside).collect();
    for (_, jumped, _) in &later {
        let why = jumped.as_ref().unwrap_err();
        assert!(why.contains("it blocked it through an earlier safepoint too"), "{why}");
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(spinner.taken.load(SeqCst), taken, "the thread took none of the later safepoints' signals");
    drop((deaf, later));
    spinner.unblock.store(true, SeqCst);
    spinner.end();

    // 3. Ignored by the program (its action replaces dprobe's): the next safepoint puts
    //    dprobe's back, and the kernel's SIGURG is ignored without taking it away.
    program_action(libc::SIG_IGN);
    let spinner = Spinner::start(false, false);
    let (again, jumped, took) = jump_beside(fx_push_push_mov);
    assert_eq!(jumped, Ok(()), "after {took:?}");
    kernel_urg();
    assert_eq!(safepoint_signal(), libc::SIGURG, "dprobe's handler still in place");
    drop(again);
    spinner.end();

    // 4. Handled by the program (its handler replaces dprobe's, and stays): the safepoints
    //    send the last real-time signal. A SIGURG of the program's pending for a thread as
    //    dprobe signals it still reaches the handler, and none of dprobe's does.
    program_action(on_urg as *const () as usize);
    assert_eq!(safepoint_signal(), libc::SIGRTMAX());
    let spinner = Spinner::start(true, false);
    urg(spinner.tid);
    let (merged, jumped, took) = jump_beside(fx_push_push_mov);
    assert_eq!(jumped, Ok(()), "after {took:?}");
    assert_eq!(shown_action(), on_urg as *const () as usize, "the program's handler left in place");
    assert_eq!(PROGRAM_URGS.load(SeqCst), 0, "still pending: the thread blocks it");
    spinner.unblock.store(true, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while PROGRAM_URGS.load(SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(PROGRAM_URGS.load(SeqCst), 1, "the program's handler took its signal");
    let more = [jumping(fx_push_add), jumping(fx_mov_add)];
    assert!(more.iter().all(|p| p.optimized().is_ok()));
    urg(spinner.tid);
    while PROGRAM_URGS.load(SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(PROGRAM_URGS.load(SeqCst), 2, "the program's handler took its signals and no other");
    drop((merged, more));
    spinner.end();
}
