//! Post-handlers on jump-optimized probes: the detour runs them after the probed instruction,
//! with no trap, with the trap path's semantics.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::{register, Kprobe, NotOptimized, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // A 5-byte nop, then the computation a post-handler can change.
    ".globl fxp_nop5",
    ".type fxp_nop5,@function",
    "fxp_nop5:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxp_nop5, . - fxp_nop5",
    // A window of three instructions: the post-handler runs after the first (the push).
    ".globl fxp_push",
    ".type fxp_push,@function",
    "fxp_push:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + rsi + 5]",
    "pop rbp",
    "ret",
    ".size fxp_push, . - fxp_push",
    // A jump first: no post block can follow it.
    ".globl fxp_jmp",
    ".type fxp_jmp,@function",
    "fxp_jmp:",
    ".byte 0xe9, 0x00, 0x00, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxp_jmp, . - fxp_jmp",
    // For post-handlers that come and go on a jump.
    ".globl fxp_switch",
    ".type fxp_switch,@function",
    "fxp_switch:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxp_switch, . - fxp_switch",
    // For the skip test.
    ".globl fxp_skip",
    ".type fxp_skip,@function",
    "fxp_skip:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxp_skip, . - fxp_skip",
    // For the four-thread stress test.
    ".globl fxp_stress",
    ".type fxp_stress,@function",
    "fxp_stress:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + rsi + 5]",
    "pop rbp",
    "ret",
    ".size fxp_stress, . - fxp_stress",
);

extern "C" {
    fn fxp_nop5(a: u64, b: u64) -> u64;
    fn fxp_push(a: u64, b: u64) -> u64;
    fn fxp_jmp(a: u64, b: u64) -> u64;
    fn fxp_switch(a: u64, b: u64) -> u64;
    fn fxp_skip(a: u64, b: u64) -> u64;
    fn fxp_stress(a: u64, b: u64) -> u64;
}

#[test]
fn a_post_handler_runs_through_the_jump_after_the_instruction_and_its_register_changes_are_seen() {
    static POSTS: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxp_nop5);
    let p = register(Kprobe::addr(a).post(move |regs| {
        assert_eq!(regs.rip, a.0 + 5, "a post-handler sees RIP after the probed instruction");
        regs.rdi = 100;
        POSTS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(code(a, 1), [0xe9], "the probe is a jump");
    const CALLS: u64 = 100_000;
    let threads: Vec<_> =
        (0..4u64).map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(fxp_nop5, t, i) == 100 + i))).collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "the post-handler's rdi was not what the function used");
    assert_eq!((POSTS.load(Relaxed), p.hits(), p.nmissed()), (4 * CALLS, 4 * CALLS, 0));
    drop(p);
    assert_eq!(call2(fxp_nop5, 1, 2), 3);
    assert_eq!(code(a, 5), [0x0f, 0x1f, 0x44, 0x00, 0x00], "original bytes back");
}

#[test]
fn in_a_window_of_several_instructions_the_post_handler_runs_after_the_first() {
    static PRE_RSP: AtomicU64 = AtomicU64::new(0);
    static POST: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxp_push);
    let p = register(
        Kprobe::addr(a)
            .pre(|regs| {
                PRE_RSP.store(regs.rsp, Relaxed);
                PreAction::Continue
            })
            .post(move |regs| {
                assert_eq!(regs.rip, a.0 + 1, "after the push");
                assert_eq!(regs.rsp, PRE_RSP.load(Relaxed) - 8, "the push ran");
                // SAFETY: the push just stored rbp at the stack pointer.
                assert_eq!(unsafe { *(regs.rsp as *const u64) }, regs.rbp);
                regs.rsi += 1;
                POST.fetch_add(1, Relaxed);
            }),
    )
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxp_push, 1, 2), 1 + 3 + 5, "the post-handler's rsi, then the rest of the window");
    assert_eq!((p.hits(), POST.load(Relaxed)), (1, 1));
}

#[test]
fn a_post_handler_after_a_branch_keeps_the_probe_on_int3_and_still_runs() {
    static POSTS: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxp_jmp);
    let p = register(Kprobe::addr(a).post(move |regs| {
        assert_eq!(regs.rip, a.0 + 5, "where the jump went");
        POSTS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert_eq!(p.optimized(), Err(NotOptimized::PostHandler));
    assert!(p.optimized().unwrap_err().to_string().contains("branch"));
    assert_eq!(code(a, 1), [0xcc]);
    assert_eq!(call2(fxp_jmp, 3, 4), 7);
    assert_eq!((p.hits(), POSTS.load(Relaxed)), (1, 1));
    // Without a post-handler the same site is a jump.
    let q = register(Kprobe::addr(addr(fxp_jmp)).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(q.optimized(), Err(NotOptimized::PostHandler), "one site, one way");
    drop(p);
    assert_eq!(q.optimized(), Ok(()));
    assert_eq!(call2(fxp_jmp, 3, 4), 7);
    assert_eq!(q.hits(), 1);
}

#[test]
fn post_handlers_that_come_and_go_switch_the_jump_between_detours_and_count_exactly() {
    static PRE: AtomicU64 = AtomicU64::new(0);
    static POST: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxp_switch);
    let counting = register(Kprobe::addr(a).pre(|_| {
        PRE.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    for round in 1..=20u64 {
        assert_eq!(counting.optimized(), Ok(()));
        assert_eq!(call2(fxp_switch, round, 1), round + 1);
        let with_post = register(Kprobe::addr(a).post(|regs| {
            regs.rdi *= 2;
            POST.fetch_add(1, Relaxed);
        }))
        .unwrap();
        assert_eq!((code(a, 1), with_post.optimized()), (vec![0xe9], Ok(())));
        assert_eq!(call2(fxp_switch, round, 1), 2 * round + 1);
        drop(with_post);
    }
    assert_eq!((PRE.load(Relaxed), counting.hits(), POST.load(Relaxed)), (40, 40, 20));
}

#[test]
fn a_pre_handler_that_moves_rip_skips_the_instruction_and_the_post_handler() {
    static POSTS: AtomicU64 = AtomicU64::new(0);
    let p = register(
        Kprobe::addr(addr(fxp_skip))
            .pre(|regs| {
                // Return 42 from the function: pop its return address.
                // SAFETY: at the entry, the return address is at the stack pointer.
                regs.rip = unsafe { *(regs.rsp as *const u64) };
                regs.rsp += 8;
                regs.rax = 42;
                PreAction::SkipInstruction
            })
            .post(|_| {
                POSTS.fetch_add(1, Relaxed);
            }),
    )
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxp_skip, 1, 2), 42);
    assert_eq!((p.hits(), POSTS.load(Relaxed)), (1, 0));
}

#[test]
fn four_threads_call_a_probe_with_a_post_handler_while_another_optimizes_and_unoptimizes_it() {
    fixtures::optimize_and_unoptimize_under_four_callers_with(
        addr(fxp_stress),
        6,
        |t, n| assert_eq!(call2(fxp_stress, t, n), t + n + 5),
        true,
    );
}
