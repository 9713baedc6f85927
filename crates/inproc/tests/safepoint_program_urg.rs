//! The program's own `SIGURG`, the signal dprobe's safepoints send: one the program ignores
//! (no handler) leaves dprobe's handler in place; one it handles reaches its handler, once,
//! and dprobe's never do; one pending when a safepoint sends dprobe's (a standard signal does
//! not queue: the two merge) answers the safepoint.
//! (A test binary of its own: it sends `SIGURG` to its threads.)
mod fixtures;
use fixtures::{addr, call2, fx_mov_add, fx_push_add, fx_push_push_mov};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dprobe_inproc::{keep_traps_open, register, safepoint_signal, Kprobe, PreAction, Probe};

/// The tests send signals to the whole process: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `SIGURG`s the program's handler took.
static PROGRAM_URGS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_urg(_: libc::c_int) {
    PROGRAM_URGS.fetch_add(1, SeqCst);
}

/// A probe on `f` that jumps if it can.
fn jumping(f: unsafe extern "C" fn(u64, u64) -> u64) -> Probe {
    register(Kprobe::addr(addr(f)).pre(|_| PreAction::Continue)).unwrap()
}

/// A thread that spins in user code (a thread asleep in a system call is not signalled) until
/// `stop`, first blocking `SIGURG` if `blocked`, and unblocking it when `unblock` is set.
fn spinner(stop: &'static AtomicBool, blocked: bool, unblock: &'static AtomicBool) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        set_blocked(blocked);
        // SAFETY: gettid has no argument.
        tx.send(unsafe { libc::gettid() }).unwrap();
        while !stop.load(SeqCst) {
            if blocked && unblock.load(SeqCst) {
                set_blocked(false);
            }
            std::hint::spin_loop();
        }
    });
    SPINNER.store(u64::from(rx.recv().unwrap() as u32), SeqCst);
    thread
}

/// The spinner's thread id.
static SPINNER: AtomicU64 = AtomicU64::new(0);

/// Block or unblock `SIGURG` in this thread.
fn set_blocked(blocked: bool) {
    // SAFETY: a signal set on this frame, filled before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGURG);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

/// Send `SIGURG` to thread `tid` of this process.
fn urg(tid: u64) {
    // SAFETY: a signal to a thread of this process.
    assert_eq!(unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as i32, libc::SIGURG) }, 0);
}

#[test]
fn the_safepoint_signal_is_sigurg() {
    assert_eq!(safepoint_signal(), libc::SIGURG);
}

#[test]
fn a_sigurg_the_program_ignores_leaves_dprobes_handler_in_place() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    static STOP: AtomicBool = AtomicBool::new(false);
    static NEVER: AtomicBool = AtomicBool::new(false);
    STOP.store(false, SeqCst);
    let thread = spinner(&STOP, false, &NEVER);
    let first = jumping(fx_push_push_mov);
    assert_eq!(first.optimized(), Ok(()));
    // The program's own, to a thread and to the process, while dprobe's handler is installed:
    // ignored, as without dprobe.
    urg(SPINNER.load(SeqCst));
    // SAFETY: a signal to this process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGURG) }, 0);
    std::thread::sleep(Duration::from_millis(20));
    // The next safepoint's signal still reaches dprobe's handler: the spinner answers.
    let started = Instant::now();
    let second = jumping(fx_push_add);
    assert_eq!(second.optimized(), Ok(()), "after {:?}", started.elapsed());
    assert_eq!((call2(fx_push_push_mov, 1, 2), call2(fx_push_add, 1, 2)), (16, 3));
    drop((first, second));
    STOP.store(true, SeqCst);
    thread.join().unwrap();
}

#[test]
fn the_programs_handler_takes_its_own_sigurgs_and_a_merged_one_answers_the_safepoint() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // With the guard, the program's `sigaction` for dprobe's signals is answered without
    // replacing dprobe's handler (as the agent runs).
    let guard = keep_traps_open().unwrap();
    // SAFETY: a plain handler for SIGURG, installed through the C library.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_urg as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()), 0);
    }
    PROGRAM_URGS.store(0, SeqCst);
    static STOP: AtomicBool = AtomicBool::new(false);
    static UNBLOCK: AtomicBool = AtomicBool::new(false);
    STOP.store(false, SeqCst);
    UNBLOCK.store(false, SeqCst);
    // The spinner blocks SIGURG, and the program's is pending for it when dprobe's is sent.
    let thread = spinner(&STOP, true, &UNBLOCK);
    urg(SPINNER.load(SeqCst));
    let unblocker = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        UNBLOCK.store(true, SeqCst);
    });
    let started = Instant::now();
    let merged = jumping(fx_push_push_mov);
    // Answered once the spinner unblocks, by the program's signal: not after the whole
    // patience (5 s), without a jump.
    assert_eq!(merged.optimized(), Ok(()), "after {:?}", started.elapsed());
    unblocker.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while PROGRAM_URGS.load(SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(PROGRAM_URGS.load(SeqCst), 1, "the program's handler took its signal");
    // More safepoints signal the spinner: none of them reaches the program's handler.
    let more = [jumping(fx_push_add), jumping(fx_mov_add)];
    assert!(more.iter().all(|p| p.optimized().is_ok()));
    urg(SPINNER.load(SeqCst));
    while PROGRAM_URGS.load(SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(PROGRAM_URGS.load(SeqCst), 2, "the program's handler took its signals and no other");
    // The program sees its own action as installed.
    // SAFETY: reads the action into a zeroed struct.
    let shown = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGURG, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    };
    assert_eq!(shown, on_urg as *const () as usize);
    drop((merged, more));
    STOP.store(true, SeqCst);
    thread.join().unwrap();
    drop(guard);
}
