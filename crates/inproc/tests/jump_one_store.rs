//! A jump over one instruction goes in and comes off in one store, with no `int3` on the site
//! in between: a thread that blocks every signal (as the C library's own code does around the
//! `clone` of a new thread and as a thread ends, with a raw system call) runs the probed code
//! all along, and an `int3` it met would kill the process (the kernel forces the trap's
//! signal, and resets the action of a forced signal the thread blocks).
//! (A test binary of its own: a failure kills the process.)
mod fixtures;
use fixtures::{addr, call2, code};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use dprobe_inproc::{register, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    ".p2align 12",
    // One instruction of 8 bytes at an aligned address: its jump fits one aligned word.
    ".globl fos_aligned",
    ".type fos_aligned,@function",
    "fos_aligned:",
    "lea rax, [rdi + rsi + 0x100]",
    "ret",
    ".size fos_aligned, . - fos_aligned",
    // The same at 5 past an aligned address: its jump's five bytes span two words, so it
    // goes in through the `int3` protocol.
    ".p2align 4",
    "nop",
    "nop",
    "nop",
    "nop",
    "nop",
    ".globl fos_straddling",
    ".type fos_straddling,@function",
    "fos_straddling:",
    "lea rax, [rdi + rsi + 0x200]",
    "ret",
    ".size fos_straddling, . - fos_straddling",
    // Several instructions under the jump, at an aligned address.
    ".p2align 4",
    ".globl fos_several",
    ".type fos_several,@function",
    "fos_several:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + rsi + 0x300]",
    "pop rbp",
    "ret",
    ".size fos_several, . - fos_several",
    ".p2align 12",
);

extern "C" {
    fn fos_aligned(a: u64, b: u64) -> u64;
    fn fos_straddling(a: u64, b: u64) -> u64;
    fn fos_several(a: u64, b: u64) -> u64;
}

/// One test at a time: a worker that blocks every signal keeps another test's safepoint from
/// being answered.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Block every signal in this thread, `SIGTRAP` among them, with the raw system call (as the
/// C library does internally, past any wrapper dprobe could watch).
fn block_every_signal() {
    set_mask(!0);
}

/// Set this thread's blocked signals to `mask` with the raw system call.
fn set_mask(mask: u64) {
    // SAFETY: `rt_sigprocmask` reads the 8-byte set from `mask`, alive for the call, and
    // writes no old set.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &mask, 0usize, 8usize) };
    assert_eq!(r, 0, "rt_sigprocmask");
}

#[test]
fn a_jump_over_one_instruction_goes_in_and_comes_off_with_no_int3_under_a_thread_that_blocks_every_signal() {
    let _serial = one_at_a_time();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fos_aligned);
    assert_eq!(at.0 % 8, 0, "the fixture is aligned");
    let original = code(at, 8);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            block_every_signal();
            let (mut calls, mut wrong) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                wrong += u64::from(call2(fos_aligned, calls, 1) != calls + 0x101);
                calls += 1;
            }
            (calls, wrong)
        })
    };
    for round in 0..200 {
        let probe = register(Kprobe::addr(at).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .unwrap();
        assert_eq!(probe.optimized(), Ok(()), "round {round}: a jump");
        std::thread::sleep(std::time::Duration::from_micros(200));
        probe.unregister().unwrap();
        assert_eq!(code(at, 8), original, "round {round}: the code as it was");
    }
    stop.store(true, Relaxed);
    let (calls, wrong) = worker.join().unwrap();
    assert_eq!(wrong, 0, "every call returned its sum");
    assert!(HITS.load(Relaxed) > 0, "the worker's calls were hit ({calls} calls)");
    assert!(HITS.load(Relaxed) <= calls, "no call counted twice");
}

#[test]
fn a_jump_whose_bytes_span_two_words_still_goes_in_and_comes_off() {
    let _serial = one_at_a_time();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fos_straddling);
    assert_eq!(at.0 % 8, 5, "the fixture straddles two words");
    let original = code(at, 8);
    let probe = register(Kprobe::addr(at).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(probe.optimized(), Ok(()));
    assert_eq!(code(at, 1), [0xe9], "a jump");
    assert_eq!(call2(fos_straddling, 1, 2), 0x203);
    probe.unregister().unwrap();
    assert_eq!(code(at, 8), original);
    assert_eq!(call2(fos_straddling, 3, 4), 0x207);
    assert_eq!(HITS.load(Relaxed), 1);
}

/// A jump over several instructions goes in over the protocol's `int3` (its safepoint needs
/// every thread to answer), while the worker takes signals; it comes off in one store while the
/// worker blocks every signal and runs the code.
#[test]
fn a_jump_over_several_instructions_comes_off_with_no_int3_under_a_thread_that_blocks_every_signal() {
    let _serial = one_at_a_time();
    use std::sync::atomic::AtomicU8;
    static HITS: AtomicU64 = AtomicU64::new(0);
    /// The worker's signals: asked open (0) or blocked (1) by the test; said so by the worker
    /// (2 open, 3 blocked); 4 to stop.
    static PHASE: AtomicU8 = AtomicU8::new(0);
    let at = addr(fos_several);
    let original = code(at, 8);
    let worker = std::thread::spawn(|| {
        let (mut calls, mut wrong) = (0u64, 0u64);
        loop {
            match PHASE.load(Relaxed) {
                0 => {
                    set_mask(0);
                    PHASE.store(2, Relaxed);
                }
                1 => {
                    block_every_signal();
                    PHASE.store(3, Relaxed);
                }
                4 => return (calls, wrong),
                _ => {}
            }
            wrong += u64::from(call2(fos_several, calls, 1) != calls + 0x301);
            calls += 1;
        }
    });
    let wait_for = |phase: u8| {
        while PHASE.load(Relaxed) != phase {
            std::thread::yield_now();
        }
    };
    for round in 0..100 {
        PHASE.store(0, Relaxed);
        wait_for(2);
        let probe = register(Kprobe::addr(at).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .unwrap();
        assert_eq!(probe.optimized(), Ok(()), "round {round}: a jump");
        PHASE.store(1, Relaxed);
        wait_for(3);
        std::thread::sleep(std::time::Duration::from_micros(200));
        probe.unregister().unwrap();
        assert_eq!(code(at, 8), original, "round {round}: the code as it was");
    }
    PHASE.store(4, Relaxed);
    let (calls, wrong) = worker.join().unwrap();
    assert_eq!(wrong, 0, "every call returned its sum");
    assert!(HITS.load(Relaxed) > 0, "the worker's calls were hit ({calls} calls)");
}
