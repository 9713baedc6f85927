//! Jumps over several instructions: the usual prologues become jumps, and no thread is ever
//! left inside the replaced instructions (moved into the detour by the safepoint).
mod fixtures;
use fixtures::{addr, call2, code, fx_park};

use dprobe_inproc::{register, Addr, Kprobe, NotOptimized, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::*};

std::arch::global_asm!(
    ".text",
    // endbr64 (4 bytes) and push %rbp: a window of two instructions.
    ".globl fxw_endbr",
    ".type fxw_endbr,@function",
    "fxw_endbr:",
    "endbr64",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + rsi + 7]",
    "pop rbp",
    "ret",
    ".size fxw_endbr, . - fxw_endbr",
    // push; push; mov: three instructions.
    ".globl fxw_pushpush",
    ".type fxw_pushpush,@function",
    "fxw_pushpush:",
    "push rbp",
    "push rbx",
    "mov rbx, rdi",
    "lea rax, [rbx + rsi + 9]",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size fxw_pushpush, . - fxw_pushpush",
    // push %rbp; mov %rsp,%rbp; lea: the stress test's.
    ".globl fxw_stress",
    ".type fxw_stress,@function",
    "fxw_stress:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + rsi + 5]",
    "pop rbp",
    "ret",
    ".size fxw_stress, . - fxw_stress",
    // For the probe inside another probe's window.
    ".globl fxw_inner",
    ".type fxw_inner,@function",
    "fxw_inner:",
    "push rbp",
    "push rbx",
    "mov rbx, rdi",
    "lea rax, [rbx + rsi + 11]",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size fxw_inner, . - fxw_inner",
);

extern "C" {
    fn fxw_endbr(a: u64, b: u64) -> u64;
    fn fxw_pushpush(a: u64, b: u64) -> u64;
    fn fxw_stress(a: u64, b: u64) -> u64;
    fn fxw_inner(a: u64, b: u64) -> u64;
}

#[test]
fn an_endbr64_push_prologue_and_a_push_push_mov_prologue_are_jumps_that_count_every_hit() {
    static HITS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    for (k, (f, plus)) in
        [(fxw_endbr as unsafe extern "C" fn(u64, u64) -> u64, 7), (fxw_pushpush, 9)].into_iter().enumerate()
    {
        let a = addr(f);
        let original = code(a, 8);
        let p = register(Kprobe::addr(a).pre(move |regs| {
            assert_eq!(regs.rip, a.0);
            HITS[k].fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .unwrap();
        assert_eq!(p.optimized(), Ok(()));
        assert_eq!(code(a, 1), [0xe9], "the probe is a jump");
        const CALLS: u64 = 100_000;
        let threads: Vec<_> =
            (0..4u64).map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(f, t, i) == t + i + plus))).collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()), "the relocated prologue computed a wrong value");
        assert_eq!((HITS[k].load(Relaxed), p.hits(), p.nmissed()), (4 * CALLS, 4 * CALLS, 0));
        drop(p);
        assert_eq!(code(a, 8), original, "original bytes back");
        assert_eq!(call2(f, 1, 2), 3 + plus);
    }
}

#[test]
fn a_thread_parked_inside_the_window_by_a_signal_handler_is_moved_into_the_detour() {
    let a = addr(fx_park);
    const AFTER: u64 = 10_000;
    // Calls interrupted between endbr64 and push.
    let (p, runs) = fixtures::park_then_optimize(a.0 + 4, a, AFTER);
    assert_eq!(code(a, 1), [0xe9]);
    // The parked call entered before the probe existed: only the later ones are hits (one
    // more call may have started before the worker saw RELEASE).
    assert!(p.hits() == AFTER || p.hits() == AFTER + 1, "{} hits", p.hits());
    assert_eq!(runs.load(Relaxed), p.hits());
}

#[test]
fn four_threads_call_while_another_optimizes_and_unoptimizes_a_window_of_three_instructions_a_thousand_times() {
    fixtures::optimize_and_unoptimize_under_four_callers(addr(fxw_stress), 8, |t, n| {
        assert_eq!(call2(fxw_stress, t, n), t + n + 5);
    });
}

#[test]
fn a_probe_inside_a_window_turns_the_jump_back_into_int3_and_both_count() {
    let a = addr(fxw_inner);
    let outer = register(Kprobe::addr(a)).unwrap();
    assert_eq!(outer.optimized(), Ok(()));
    let inner = register(Kprobe::addr(Addr(a.0 + 1))).unwrap();
    assert_eq!(outer.optimized(), Err(NotOptimized::ProbeInWindow { other: Addr(a.0 + 1) }));
    assert_eq!(inner.optimized(), Ok(()), "inside the function: a jump of its own");
    assert_eq!(code(a, 2), [0xcc, 0xe9], "the outer probe is back on int3, the inner one a jump");
    for i in 0..100 {
        assert_eq!(call2(fxw_inner, i, 1), i + 12);
    }
    assert_eq!((outer.hits(), inner.hits()), (100, 100));
    drop(inner);
    assert_eq!(call2(fxw_inner, 1, 1), 13);
    assert_eq!(outer.hits(), 101);
    drop(outer);
    assert_eq!(code(a, 2), [0x55, 0x53]);
}
