//! Jumps while a thread is held by a tracer (a debugger, or dprobe's ptrace engine holding a
//! started program while its agent places the probes): a held thread cannot take a signal
//! until it is let go, so the safepoint reads where it would resume instead of signalling it
//! (and waiting out its patience for an answer that cannot come), and refuses the jump when
//! that place is inside the window.
mod fixtures;
use fixtures::{addr, call2, call_park_until, code, fx_park, fx_push_push_mov};

use dprobe_inproc::{register, Kprobe, NotOptimized, PreAction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time: each holds a thread of this process, and a safepoint of the other
/// test's would have to find its way around it too.
static SERIAL: Mutex<()> = Mutex::new(());

/// A guard against hanging, not a measure of speed.
const DEADLOCK: Duration = Duration::from_secs(120);

/// Where the tracer stops the thread.
#[derive(Clone, Copy)]
enum Place {
    /// Anywhere outside `[start, end)`.
    Outside(u64, u64),
    /// Exactly at this address (single-stepped there).
    At(u64),
}

impl Place {
    fn reached(self, rip: u64) -> bool {
        match self {
            Place::Outside(start, end) => !(start..end).contains(&rip),
            Place::At(at) => rip == at,
        }
    }
}

/// A child process that traces one thread of this process and holds it stopped until it is
/// told to let go (or this process closes the pipe).
struct Tracer {
    pid: libc::pid_t,
    commands: libc::c_int,
}

impl Tracer {
    /// Fork a tracer that seizes thread `tid`, interrupts it and single-steps it to `place`;
    /// returns it and the thread's program counter there.
    fn hold(tid: i32, place: Place) -> (Tracer, u64) {
        let (mut reports, mut commands) = ([0; 2], [0; 2]);
        // SAFETY: two pipes into local arrays; the child only makes system calls (no
        // allocation, no lock: other threads of this process may hold them at the fork).
        let pid = unsafe {
            assert_eq!(libc::pipe(reports.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(commands.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                libc::close(commands[1]);
                trace(tid, place, reports[1], commands[0]);
            }
            libc::close(reports[1]);
            libc::close(commands[0]);
            pid
        };
        let tracer = Tracer { pid, commands: commands[1] };
        let mut rip = [0u8; 8];
        // SAFETY: reads 8 bytes into a local array from the pipe's read end.
        let n = unsafe { libc::read(reports[0], rip.as_mut_ptr().cast(), 8) };
        // SAFETY: closes the read end this process owns.
        unsafe { libc::close(reports[0]) };
        assert_eq!(n, 8, "the tracer could not hold thread {tid} (its status: {:?})", tracer.end());
        (tracer, u64::from_ne_bytes(rip))
    }

    /// Tell it to let the thread go, and wait for it: its exit status.
    fn release(self) -> i32 {
        // SAFETY: writes one byte to the pipe the tracer waits on.
        assert_eq!(unsafe { libc::write(self.commands, [1u8].as_ptr().cast(), 1) }, 1);
        self.end()
    }

    fn end(&self) -> i32 {
        let mut status = 0;
        // SAFETY: waits for this process's own child.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        status
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: closes the pipe's write end; the tracer then lets the thread go and exits
        // (reaped by `end`, or by init once this process ends).
        unsafe { libc::close(self.commands) };
    }
}

/// The tracer's side: hold `tid` at `place`, report its program counter on `reports`, let it
/// go when `commands` has a byte or is closed. Exit status 0 once let go.
///
/// # Safety
/// Runs in a child forked from this multithreaded process: system calls only.
unsafe fn trace(tid: i32, place: Place, reports: libc::c_int, commands: libc::c_int) -> ! {
    // SAFETY: ptrace and waitpid on a thread of the parent, which this process may trace.
    unsafe {
        let wait = |status: &mut libc::c_int| {
            if libc::waitpid(tid, status, libc::__WALL) != tid || !libc::WIFSTOPPED(*status) {
                libc::_exit(3);
            }
        };
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 || libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
            libc::_exit(2);
        }
        let mut status = 0;
        loop {
            wait(&mut status);
            if status >> 16 == libc::PTRACE_EVENT_STOP {
                break;
            }
            // The test process's own signal came first: deliver it.
            libc::ptrace(libc::PTRACE_CONT, tid, 0, libc::WSTOPSIG(status));
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        let mut steps = 0u32;
        loop {
            // A signal stop instead of the step's trap: the signal is delivered with the next
            // step (a thread left in a signal-delivery stop would lose it at the detach).
            let signal = match status >> 16 == 0 && libc::WSTOPSIG(status) != libc::SIGTRAP {
                true => libc::WSTOPSIG(status),
                false => 0,
            };
            if signal == 0 {
                if libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs) != 0 {
                    libc::_exit(4);
                }
                if place.reached(regs.rip) {
                    break;
                }
            }
            steps += 1;
            if steps > 10_000_000 {
                libc::_exit(5);
            }
            libc::ptrace(libc::PTRACE_SINGLESTEP, tid, 0, signal);
            wait(&mut status);
        }
        libc::write(reports, (&regs.rip as *const u64).cast(), 8);
        let mut byte = 0u8;
        libc::read(commands, (&mut byte as *mut u8).cast(), 1);
        libc::_exit(if libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) == 0 { 0 } else { 6 })
    }
}

/// The system call thread `tid` is in: `-1` when it is stopped outside one.
fn syscall_of(tid: i32) -> i64 {
    let line = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Thread `tid`'s state letter (`t`: stopped by its tracer) and its pending signals.
fn state_and_pending(tid: i32) -> (char, u64) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_owned();
    (field("State:").chars().next().unwrap(), u64::from_str_radix(&field("SigPnd:"), 16).unwrap())
}

/// The safepoints' signals (`SIGURG`, or the last real-time one) as bits of a pending mask.
fn safepoint_bit() -> u64 {
    1 << (libc::SIGURG - 1) | 1 << (libc::SIGRTMAX() - 1)
}

/// Join `thread`, failing (instead of hanging) if it never ends.
fn join<T>(thread: std::thread::JoinHandle<T>) -> T {
    let deadline = Instant::now() + DEADLOCK;
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "the worker never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    thread.join().unwrap()
}

#[test]
fn a_thread_held_by_a_tracer_outside_the_window_is_not_signalled_and_the_probe_jumps() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static SPINNING: AtomicBool = AtomicBool::new(false);
    static GO: AtomicBool = AtomicBool::new(false);
    static HITS: AtomicU64 = AtomicU64::new(0);
    const CALLS: u64 = 10_000;
    let a = addr(fx_push_push_mov);
    let original = code(a, 8);
    let (tx, rx) = std::sync::mpsc::channel();
    // Spins outside the function until the test lets it call, then calls it CALLS times.
    let worker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        SPINNING.store(true, SeqCst);
        while !GO.load(SeqCst) {
            std::hint::spin_loop();
        }
        (0..CALLS).find(|&k| call2(fx_push_push_mov, k, 1) != k + 14)
    });
    let tid = rx.recv().unwrap();
    while !SPINNING.load(SeqCst) {
        std::thread::yield_now();
    }
    let (tracer, rip) = Tracer::hold(tid, Place::Outside(a.0, a.0 + 16));
    assert_eq!((state_and_pending(tid).0, syscall_of(tid)), ('t', -1), "held by its tracer at {rip:#x}");
    let p = register(Kprobe::addr(a).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the held thread resumes outside the window: nothing stands in the way");
    assert_eq!(code(a, 1), [0xe9], "the probe is a jump");
    let (state, pending) = state_and_pending(tid);
    assert_eq!((state, pending & safepoint_bit()), ('t', 0), "still held, and not signalled");
    GO.store(true, SeqCst);
    assert_eq!(tracer.release(), 0, "the tracer let the thread go");
    assert_eq!(join(worker), None, "every call through the jump computed the right value");
    assert_eq!((HITS.load(Relaxed), p.hits(), p.nmissed()), (CALLS, CALLS, 0));
    drop(p);
    assert_eq!(code(a, 8), original, "original bytes back");
}

#[test]
fn a_thread_held_by_a_tracer_inside_the_window_keeps_the_probe_on_int3_and_resumes_there() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static HELD: AtomicBool = AtomicBool::new(false);
    static HITS: AtomicU64 = AtomicU64::new(0);
    const AFTER: u64 = 10_000;
    let a = addr(fx_park);
    let original = code(a, 8);
    // Calls fx_park(i, 1) until HELD is set, then fx_park(k, k) AFTER times, checking each.
    let (worker, tid) = call_park_until(&HELD, AFTER);
    // Between the window's two instructions (endbr64 and push): the tracer steps it there.
    let inside = a.0 + 4;
    let (tracer, rip) = Tracer::hold(tid, Place::At(inside));
    assert_eq!(rip, inside);
    assert_eq!((state_and_pending(tid).0, syscall_of(tid)), ('t', -1), "held by its tracer");
    HELD.store(true, SeqCst);
    let p = register(Kprobe::addr(a).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(
        p.optimized(),
        Err(NotOptimized::ThreadParkedInWindow { tid, syscall: -1 }),
        "a thread that will resume inside the window forbids the jump"
    );
    assert_eq!(code(a, 1), [0xcc], "the probe stays an int3");
    let (state, pending) = state_and_pending(tid);
    assert_eq!((state, pending & safepoint_bit()), ('t', 0), "still held, and not signalled");
    assert_eq!(tracer.release(), 0, "the tracer let the thread go");
    let calls =
        join(worker).expect("the held call, resumed inside the window, and every later one computed the right value");
    assert!(calls > 0);
    // The held call entered before the probe existed: only the later ones are hits.
    assert_eq!((HITS.load(Relaxed), p.hits(), p.nmissed()), (AFTER, AFTER, 0));
    drop(p);
    assert_eq!(code(a, 8), original, "original bytes back");
}
