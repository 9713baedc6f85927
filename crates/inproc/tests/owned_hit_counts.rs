//! Hit counts stay exact where the first threads to count add without a locked instruction,
//! each in a stripe of its own (`dprobe_core::HitCount`): an owner's hits, other threads' hits
//! at the same time (more threads than stripes: some add to a shared word), and hits from a
//! signal handler that interrupts an owner anywhere, its hit path included (there they count
//! as missed, never as a hit, never lost).
mod fixtures;
use fixtures::addr;

use dprobe_inproc::{register, register_kretprobe, Kprobe, Kretprobe, PreAction};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // A 5-byte nop first: the probe on it is jump-optimized.
    ".globl fxo_counted",
    ".type fxo_counted,@function",
    "fxo_counted:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxo_counted, . - fxo_counted",
    ".globl fxo_int3",
    ".type fxo_int3,@function",
    "fxo_int3:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxo_int3, . - fxo_int3",
    ".globl fxo_returns",
    ".type fxo_returns,@function",
    "fxo_returns:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxo_returns, . - fxo_returns",
);

extern "C" {
    fn fxo_counted(a: u64, b: u64) -> u64;
    fn fxo_int3(a: u64, b: u64) -> u64;
    fn fxo_returns(a: u64, b: u64) -> u64;
}

/// Calls each of the threads makes at least; the first thread starts alone, so it owns a
/// stripe of the count, and goes on until it was sent `SIGNALS_AT_LEAST` signals.
const CALLS: u64 = 50_000;
const SIGNALS_AT_LEAST: u64 = 2_000;
/// The threads that call at the same time as the first: more than the count's stripes.
const OTHERS: u64 = 6;

/// The function the signal handler calls, and how many times it did.
static IN_SIGNAL: AtomicU64 = AtomicU64::new(0);
static SIGNAL_TARGET: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    let f = SIGNAL_TARGET.load(Relaxed);
    // SAFETY: the test stores one of this file's fixtures, which take two integers.
    let f: unsafe extern "C" fn(u64, u64) -> u64 = unsafe { std::mem::transmute(f as usize) };
    // SAFETY: the fixture only adds its arguments.
    std::hint::black_box(unsafe { f(1, 2) });
    IN_SIGNAL.fetch_add(1, Relaxed);
}

/// One test at a time sets the handler's target.
static SIGNALS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Call `f` `CALLS` times on the first thread (alone for its first call, so that it owns the
/// count), then on `OTHERS` more at once, while another thread sends the first `SIGUSR1` every few
/// microseconds; its handler calls `f` too. Returns the calls made, signal handlers' included,
/// and those of signal handlers.
fn calls_under_signals(f: unsafe extern "C" fn(u64, u64) -> u64) -> (u64, u64) {
    let _one_at_a_time = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
    SIGNAL_TARGET.store(f as *const () as usize as u64, Relaxed);
    IN_SIGNAL.store(0, Relaxed);
    // SAFETY: installs a handler that only calls a fixture and adds to an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_usr1 as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()), 0);
    }
    let call = move |i: u64| {
        // SAFETY: the fixture only adds its arguments.
        std::hint::black_box(unsafe { f(i, 1) });
    };
    let (owner_tid, sent, done) = (AtomicI32::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let owner_calls = std::thread::scope(|s| {
        let owner = s.spawn(|| {
            call(0);
            // SAFETY: gettid has no preconditions.
            owner_tid.store(unsafe { libc::syscall(libc::SYS_gettid) } as i32, Relaxed);
            let mut n = 1;
            while n < CALLS || sent.load(Relaxed) < SIGNALS_AT_LEAST {
                call(n);
                n += 1;
            }
            n
        });
        while owner_tid.load(Relaxed) == 0 {
            std::thread::yield_now();
        }
        for _ in 0..OTHERS {
            s.spawn(|| (0..CALLS).for_each(call));
        }
        s.spawn(|| {
            let (me, tid) = (std::process::id() as libc::pid_t, owner_tid.load(Relaxed));
            while !done.load(Relaxed) {
                // SAFETY: signals the owner, a thread of this process that runs until `done`
                // is set; SIGUSR1's handler is installed.
                unsafe { libc::syscall(libc::SYS_tgkill, me, tid, libc::SIGUSR1) };
                sent.fetch_add(1, Relaxed);
                // Paced: a storm would leave the owner in its handlers alone.
                std::thread::sleep(std::time::Duration::from_micros(10));
            }
        });
        let owner_calls = owner.join().unwrap();
        done.store(true, Relaxed);
        owner_calls
    });
    let in_signal = IN_SIGNAL.load(Relaxed);
    (owner_calls + OTHERS * CALLS + in_signal, in_signal)
}

#[test]
fn hits_of_the_owner_of_others_and_of_signal_handlers_add_up_on_either_path() {
    static HANDLED_JUMP: AtomicU64 = AtomicU64::new(0);
    static HANDLED_INT3: AtomicU64 = AtomicU64::new(0);
    let jump = register(Kprobe::addr(addr(fxo_counted)).pre(|_| {
        HANDLED_JUMP.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(jump.optimized(), Ok(()));
    let int3 = register(
        Kprobe::addr(addr(fxo_int3))
            .pre(|_| {
                HANDLED_INT3.fetch_add(1, Relaxed);
                PreAction::Continue
            })
            .no_optimize(),
    )
    .unwrap();
    for (probe, handled, f) in [(&jump, &HANDLED_JUMP, fxo_counted as _), (&int3, &HANDLED_INT3, fxo_int3 as _)] {
        let (calls, in_signal) = calls_under_signals(f);
        assert!(in_signal > 0, "no signal handler call");
        // Each hit ran the handler once; a hit that could not (inside the hit path) is missed.
        assert_eq!(probe.hits(), handled.load(Relaxed), "hits counted against handler calls");
        assert_eq!(probe.hits() + probe.nmissed(), calls, "calls seen ({in_signal} from signal handlers)");
    }
}

#[test]
fn a_return_probe_counts_every_entry_and_return_of_four_threads_and_signal_handlers() {
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    let probe = register_kretprobe(Kretprobe::addr(addr(fxo_returns)).handler(|_, _| {
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    let (calls, in_signal) = calls_under_signals(fxo_returns);
    assert!(in_signal > 0, "no signal handler call");
    let stats = probe.stats();
    assert_eq!(stats.returns, RETURNS.load(Relaxed), "returns counted against handler calls");
    assert_eq!(stats.hits, stats.returns + stats.missed, "entries against returns: {stats:?}");
    assert_eq!(stats.hits + stats.reentered, calls, "calls seen: {stats:?}");
}
