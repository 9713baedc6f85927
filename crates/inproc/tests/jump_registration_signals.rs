//! The program's signals sent to a thread while it registers and unregisters jump-optimized
//! probes: the registrar holds them back while it writes the code under its fault guard, and
//! delivers every one of them afterwards, with the thread's signal mask as it was.
//! (A test binary of its own: it counts every delivery of its signal in the process.)
mod fixtures;
use fixtures::{addr, call2, code};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dprobe_inproc::{register_all, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    ".p2align 12",
    ".globl fxs_a",
    ".type fxs_a,@function",
    "fxs_a:",
    "lea rax, [rdi + rsi + 0x100]",
    "ret",
    ".size fxs_a, . - fxs_a",
    ".p2align 4",
    ".globl fxs_b",
    ".type fxs_b,@function",
    "fxs_b:",
    "lea rax, [rdi + rsi + 0x200]",
    "ret",
    ".size fxs_b, . - fxs_b",
    ".p2align 4",
    ".globl fxs_c",
    ".type fxs_c,@function",
    "fxs_c:",
    "lea rax, [rdi + rsi + 0x300]",
    "ret",
    ".size fxs_c, . - fxs_c",
    ".p2align 12",
    ".globl fxs_blocked_jump",
    ".type fxs_blocked_jump,@function",
    "fxs_blocked_jump:",
    "lea rax, [rdi + rsi + 0x400]",
    "ret",
    ".size fxs_blocked_jump, . - fxs_blocked_jump",
    ".p2align 4",
    ".globl fxs_blocked_trap",
    ".type fxs_blocked_trap,@function",
    "fxs_blocked_trap:",
    "lea rax, [rdi + rsi + 0x500]",
    "ret",
    ".size fxs_blocked_trap, . - fxs_blocked_trap",
    ".p2align 12",
);

extern "C" {
    fn fxs_a(a: u64, b: u64) -> u64;
    fn fxs_b(a: u64, b: u64) -> u64;
    fn fxs_c(a: u64, b: u64) -> u64;
    fn fxs_blocked_jump(a: u64, b: u64) -> u64;
    fn fxs_blocked_trap(a: u64, b: u64) -> u64;
}

static DELIVERED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(_: libc::c_int) {
    DELIVERED.fetch_add(1, Relaxed);
}

/// The calling thread's blocked signals.
fn mask() -> libc::sigset_t {
    // SAFETY: reads the mask into a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set), 0);
        set
    }
}

fn same(a: &libc::sigset_t, b: &libc::sigset_t) -> bool {
    // SAFETY: both are initialized signal sets.
    (1..=64).all(|sig| unsafe { libc::sigismember(a, sig) == libc::sigismember(b, sig) })
}

#[test]
fn signals_sent_while_jumps_go_in_and_out_are_all_delivered_and_the_mask_is_kept() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let sig = libc::SIGRTMIN() + 3;
    // SAFETY: a plain handler that only counts.
    assert_ne!(unsafe { libc::signal(sig, count as *const () as libc::sighandler_t) }, libc::SIG_ERR);
    let fixtures = [(addr(fxs_a), 0x100), (addr(fxs_b), 0x200), (addr(fxs_c), 0x300)];
    let originals: Vec<Vec<u8>> = fixtures.iter().map(|(a, _)| code(*a, 8)).collect();
    let before = mask();
    // SAFETY: gettid has no arguments.
    let registrar = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !done.load(Relaxed) {
                // SAFETY: a real-time signal to a thread of this process, which handles it.
                if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), registrar, sig) } == 0 {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            sent
        })
    };
    for round in 0..200u64 {
        let probes = fixtures.iter().map(|(a, _)| {
            Kprobe::addr(*a).pre(|_| {
                HITS.fetch_add(1, Relaxed);
                PreAction::Continue
            })
        });
        let probes = register_all(probes.collect()).unwrap();
        assert!(probes.iter().all(|p| p.optimized().is_ok()), "round {round}: every probe is a jump");
        assert!(same(&mask(), &before), "round {round}: the mask after registering");
        for (f, (_, add)) in [fxs_a, fxs_b, fxs_c].into_iter().zip(fixtures) {
            assert_eq!(call2(f, round, 1), round + 1 + add);
        }
        dprobe_inproc::unregister_all(probes).unwrap();
        assert!(same(&mask(), &before), "round {round}: the mask after unregistering");
    }
    done.store(true, Relaxed);
    let sent = sender.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while DELIVERED.load(Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(sent > 0, "signals were sent");
    assert_eq!(DELIVERED.load(Relaxed), sent, "every signal sent was delivered once");
    assert_eq!(HITS.load(Relaxed), 600);
    for ((a, _), original) in fixtures.iter().zip(&originals) {
        assert_eq!(&code(*a, 8), original, "the code as it was");
    }
}

/// Run `f` on a new thread that blocks every signal.
fn in_a_thread_that_blocks_every_signal<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: blocks every signal in this thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            assert_eq!(libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()), 0);
        }
        f()
    })
    .join()
    .unwrap()
}

/// A thread that blocks every signal (a server's worker that takes them with `sigwait`)
/// registers an `int3` probe and a jump, the program makes the jump's page read-only again,
/// and the thread takes both probes out: no write of dprobe's may fault there (a fault the
/// thread blocks kills the process), and the code is as it was. (The probed functions are
/// called from another thread: one that blocks `SIGTRAP` cannot take an `int3` probe's hit.)
#[test]
fn a_thread_that_blocks_every_signal_places_and_removes_probes_without_a_fault() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let (jump, trap) = (addr(fxs_blocked_jump), addr(fxs_blocked_trap));
    let originals = (code(jump, 8), code(trap, 8));
    let probes = in_a_thread_that_blocks_every_signal(move || {
        let count = |at| {
            Kprobe::addr(at).pre(|_| {
                HITS.fetch_add(1, Relaxed);
                PreAction::Continue
            })
        };
        register_all(vec![count(jump), count(trap).no_optimize()]).unwrap()
    });
    assert_eq!(probes[0].optimized(), Ok(()));
    assert_eq!((call2(fxs_blocked_jump, 1, 2), call2(fxs_blocked_trap, 1, 2)), (0x403, 0x503));
    let page = (jump.0 & !4095) as *mut libc::c_void;
    // SAFETY: the fixtures' own page; it stays readable and executable.
    assert_eq!(unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) }, 0);
    in_a_thread_that_blocks_every_signal(move || dprobe_inproc::unregister_all(probes).unwrap());
    assert_eq!((code(jump, 8), code(trap, 8)), originals);
    assert_eq!((call2(fxs_blocked_jump, 3, 4), call2(fxs_blocked_trap, 3, 4)), (0x407, 0x507));
    assert_eq!(HITS.load(Relaxed), 2);
}
