//! Jump-optimized probes: hits through a detour, with the trap path's semantics, and the
//! patching protocol under concurrent callers.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::{register, Addr, Kprobe, NotOptimized, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // One 8-byte instruction covers the jump: optimized.
    ".globl fxj_lea",
    ".type fxj_lea,@function",
    "fxj_lea:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxj_lea, . - fxj_lea",
    // The same for tests that must not share a site with others.
    ".globl fxj_lea2",
    ".type fxj_lea2,@function",
    "fxj_lea2:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxj_lea2, . - fxj_lea2",
    ".globl fxj_lea3",
    ".type fxj_lea3,@function",
    "fxj_lea3:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxj_lea3, . - fxj_lea3",
    ".globl fxj_lea4",
    ".type fxj_lea4,@function",
    "fxj_lea4:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxj_lea4, . - fxj_lea4",
    // A 5-byte nop (what compilers emit for patchable entries).
    ".globl fxj_nop5",
    ".type fxj_nop5,@function",
    "fxj_nop5:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxj_nop5, . - fxj_nop5",
    // A branch back into byte +2 of the entry's 8-byte instruction: refused.
    ".globl fxj_branch_in",
    ".type fxj_branch_in,@function",
    "fxj_branch_in:",
    "lea rax, [rdi + rsi + 0x1000]",
    "test rdi, rdi",
    "jz 1f",
    "ret",
    "1:",
    "jmp fxj_branch_in + 2",
    ".size fxj_branch_in, . - fxj_branch_in",
    // An indirect jump (as a switch's jump table) in the function: refused.
    ".globl fxj_table",
    ".type fxj_table,@function",
    "fxj_table:",
    "lea rax, [rdi + rsi + 0x1000]",
    "lea rcx, [rip + 2f]",
    "jmp rcx",
    "2:",
    "ret",
    ".size fxj_table, . - fxj_table",
    // A load through the first argument, 7 bytes: faults on a bad pointer.
    ".globl fxj_load",
    ".type fxj_load,@function",
    "fxj_load:",
    "mov rax, qword ptr [rdi + 0x100]",
    "ret",
    ".size fxj_load, . - fxj_load",
    // Too short for a 5-byte jump.
    ".globl fxj_short",
    ".type fxj_short,@function",
    "fxj_short:",
    "lea eax, [rdi + rsi]",
    "ret",
    ".size fxj_short, . - fxj_short",
);

extern "C" {
    fn fxj_lea(a: u64, b: u64) -> u64;
    fn fxj_lea2(a: u64, b: u64) -> u64;
    fn fxj_lea3(a: u64, b: u64) -> u64;
    fn fxj_lea4(a: u64, b: u64) -> u64;
    fn fxj_nop5(a: u64, b: u64) -> u64;
    fn fxj_branch_in(a: u64, b: u64) -> u64;
    fn fxj_table(a: u64, b: u64) -> u64;
    fn fxj_short(a: u64, b: u64) -> u64;
    fn fxj_load(p: *const u64) -> u64;
}

const LEA: [u8; 8] = [0x48, 0x8d, 0x84, 0x37, 0x00, 0x10, 0x00, 0x00];

#[test]
fn an_optimized_probe_counts_every_hit_of_four_threads_and_leaves_the_bytes_as_they_were() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxj_lea);
    assert_eq!(code(a, 8), LEA);
    let p = register(Kprobe::addr(a).pre(|regs| {
        assert_eq!(regs.rip, addr(fxj_lea).0, "a pre-handler sees RIP at the probe");
        SEEN.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(code(a, 1), [0xe9], "the probe is a jump");
    let info = dprobe_inproc::list().into_iter().find(|i| i.addr == a).unwrap();
    assert_eq!(info.jump, Ok(()));
    const CALLS: u64 = 200_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(fxj_lea, t, i) == t + i + 0x1000)))
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "the relocated instruction computed a wrong value");
    assert_eq!((SEEN.load(Relaxed), p.hits(), p.nmissed()), (4 * CALLS, 4 * CALLS, 0));
    drop(p);
    assert_eq!(code(a, 8), LEA, "original bytes back");
}

#[test]
fn registers_changed_by_a_pre_handler_are_what_the_function_sees() {
    let p = register(Kprobe::addr(addr(fxj_lea2)).pre(|regs| {
        regs.rdi = 7;
        regs.rsi = 9;
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxj_lea2, 1, 2), 7 + 9 + 0x1000);
    drop(p);
    assert_eq!(call2(fxj_lea2, 1, 2), 1 + 2 + 0x1000);
}

#[test]
fn a_pre_handler_that_moves_rip_and_pops_the_return_address_returns_from_the_function() {
    let p = register(Kprobe::addr(addr(fxj_lea3)).pre(|regs| {
        // Emulate `ret` with rax = 42: skip the whole function.
        // SAFETY: at the function's entry, rsp points at its return address.
        regs.rip = unsafe { *(regs.rsp as *const u64) };
        regs.rsp += 8;
        regs.rax = 42;
        PreAction::SkipInstruction
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    for i in 0..1000 {
        assert_eq!(call2(fxj_lea3, i, i), 42);
    }
    assert_eq!(p.hits(), 1000);
}

#[test]
fn no_optimize_keeps_int3_and_several_probes_share_one_jump() {
    static A: AtomicU64 = AtomicU64::new(0);
    static B: AtomicU64 = AtomicU64::new(0);
    let a = addr(fxj_lea4);
    let first = register(Kprobe::addr(a).pre(|_| {
        A.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let second = register(Kprobe::addr(a).pre(|_| {
        B.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((first.optimized(), second.optimized()), (Ok(()), Ok(())));
    call2(fxj_lea4, 0, 0);
    assert_eq!((A.load(Relaxed), B.load(Relaxed)), (1, 1));
    // A probe that asks for int3 turns the whole site back to int3.
    let third = register(Kprobe::addr(a).no_optimize()).unwrap();
    assert_eq!(third.optimized(), Err(NotOptimized::Disabled));
    assert_eq!(first.optimized(), Err(NotOptimized::Disabled));
    assert_eq!(code(a, 8), [&[0xcc][..], &LEA[1..]].concat());
    call2(fxj_lea4, 0, 0);
    drop(third);
    assert_eq!(first.optimized(), Ok(()));
    // Disable one: the other still jumps; disable both: original bytes.
    second.disable().unwrap();
    call2(fxj_lea4, 0, 0);
    assert_eq!((A.load(Relaxed), B.load(Relaxed)), (3, 2));
    first.disable().unwrap();
    assert_eq!(first.optimized(), Err(NotOptimized::Disarmed));
    assert_eq!(code(a, 8), LEA);
    call2(fxj_lea4, 0, 0);
    first.enable().unwrap();
    assert_eq!((code(a, 1), first.optimized()), (vec![0xe9], Ok(())));
    call2(fxj_lea4, 0, 0);
    assert_eq!((A.load(Relaxed), B.load(Relaxed)), (4, 2));
    assert_eq!((first.hits(), second.hits()), (4, 2));
}

#[test]
fn a_hit_inside_a_handler_is_missed_and_a_faulting_handler_is_contained() {
    let a = addr(fxj_nop5);
    let nested = register(Kprobe::addr(a).pre(|_| {
        // The handler calls the probed function: that hit runs no handler.
        assert_eq!(call2(fxj_nop5, 1, 1), 2);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(nested.optimized(), Ok(()));
    assert_eq!(call2(fxj_nop5, 2, 3), 5);
    assert_eq!((nested.hits(), nested.nmissed()), (1, 1));
    drop(nested);
    let faulty = register(Kprobe::addr(a).pre(|_| {
        // SAFETY: deliberately invalid: the fault guard abandons the handler.
        unsafe { std::ptr::read_volatile(16 as *const u64) };
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(faulty.optimized(), Ok(()));
    assert_eq!(call2(fxj_nop5, 2, 3), 5, "the program continues after the faulting handler");
    assert_eq!(faulty.stats().handler_faults, 1);
}

#[test]
fn a_branch_into_the_window_a_jump_table_and_a_short_function_stay_on_int3_with_the_reason() {
    for (f, expect) in [
        (fxj_branch_in as unsafe extern "C" fn(u64, u64) -> u64, "branches to"),
        (fxj_table, "indirect jump"),
        (fxj_short, "cross the function's end"),
    ] {
        static HITS: AtomicU64 = AtomicU64::new(0);
        let before = HITS.load(Relaxed);
        let p = register(Kprobe::addr(addr(f)).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .unwrap();
        let why = p.optimized().unwrap_err().to_string();
        assert!(why.contains(expect), "{why}");
        assert_eq!(code(addr(f), 1), [0xcc]);
        assert_eq!(call2(f, 1, 2) & 0xff, 3);
        assert_eq!(HITS.load(Relaxed), before + 1, "the int3 probe works");
    }
    // The window of a push is several instructions: a jump too.
    let p = register(Kprobe::addr(addr(fixtures::fx_push_add))).unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fixtures::fx_push_add, 1, 2), 3);
    assert_eq!(p.hits(), 1);
}

#[test]
fn four_threads_call_while_another_optimizes_and_unoptimizes_a_thousand_times() {
    let a = Addr(fixtures::fx_riprel as *const () as usize as u64);
    fixtures::optimize_and_unoptimize_under_four_callers(a, 7, |t, _| {
        // SAFETY: reads a static.
        assert_eq!(unsafe { fixtures::fx_riprel(std::hint::black_box(t)) }, 1000 + t);
    });
}

#[test]
fn a_fault_in_the_relocated_instruction_is_reported_at_the_probe_to_the_fault_handler() {
    let at = Addr(fxj_load as *const () as u64);
    let p = register(Kprobe::addr(at).pre(|_| PreAction::Continue).fault(move |r, info| {
        if info.stage != dprobe_inproc::FaultStage::Instruction || r.rip != at.0 {
            return false;
        }
        r.rax = 0xdead;
        r.rip = at.0 + 7;
        true
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    let good = [0u64; 0x21];
    let mut with_77 = good;
    with_77[0x20] = 77;
    // SAFETY: a valid pointer (0x100 bytes in is the 0x21st word), then one the fault handler
    // deals with.
    unsafe {
        assert_eq!(fxj_load(std::hint::black_box(with_77.as_ptr())), 77);
        assert_eq!(fxj_load(std::hint::black_box(std::ptr::dangling::<u64>())), 0xdead);
        assert_eq!(fxj_load(std::hint::black_box(with_77.as_ptr())), 77);
    }
    assert_eq!(p.hits(), 3);
}
