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
    ".p2align 12",
);

extern "C" {
    fn fos_aligned(a: u64, b: u64) -> u64;
    fn fos_straddling(a: u64, b: u64) -> u64;
}

/// Block every signal in this thread, `SIGTRAP` among them, with the raw system call (as the
/// C library does internally, past any wrapper dprobe could watch).
fn block_every_signal() {
    let all: u64 = !0;
    // SAFETY: `rt_sigprocmask` reads the 8-byte set from `all`, alive for the call, and writes
    // no old set.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all, 0usize, 8usize) };
    assert_eq!(r, 0, "rt_sigprocmask");
}

#[test]
fn a_jump_over_one_instruction_goes_in_and_comes_off_with_no_int3_under_a_thread_that_blocks_every_signal() {
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
