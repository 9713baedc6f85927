//! Probes on a function's exits through a jump placed before them: the instructions leading
//! to the `ret` are the window, the probe stays on the `ret` (handlers see the registers as
//! there), and nothing is lost while the jump goes in and out under four calling threads, or
//! while a thread is parked inside the window.
mod fixtures;
use fixtures::{addr, call2, code, fx_park, fx_push_push_mov};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicU64, Ordering::*};

std::arch::global_asm!(
    ".text",
    // Calls fx_push_push_mov(a, b) with rbx holding RBX_BEFORE, which the function pushes,
    // overwrites and pops: at its ret, rbx is that value again, whatever the caller kept there.
    ".globl fxe_call_with_rbx",
    ".type fxe_call_with_rbx,@function",
    "fxe_call_with_rbx:",
    "push rbx",
    "movabs rbx, 0x5eed0fb0c0ffee00",
    "call fx_push_push_mov",
    "pop rbx",
    "ret",
    ".size fxe_call_with_rbx, . - fxe_call_with_rbx",
    // The fixtures' fx_push_push_mov (push; push; mov; lea; pop; pop; ret: the ret's window
    // is lea (+5), pop, pop, ret (+12)), again, for the pre-handler that changes the return
    // value.
    ".globl fxe_value",
    ".type fxe_value,@function",
    "fxe_value:",
    "push rbp",
    "push rbx",
    "mov rbx, rdi",
    "lea rax, [rbx + rsi + 17]",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size fxe_value, . - fxe_value",
    // The stress test's: lea (+1, 5 bytes) and the ret (+7) after pop.
    ".globl fxe_stress",
    ".type fxe_stress,@function",
    "fxe_stress:",
    "push rbp",
    "lea rax, [rdi + rsi + 5]",
    "pop rbp",
    "ret",
    ".size fxe_stress, . - fxe_stress",
    // lea (+2, 4 bytes) and the ret (+6): the jump's last byte covers the ret's int3.
    ".globl fxe_stress4",
    ".type fxe_stress4,@function",
    "fxe_stress4:",
    "push rbp",
    "pop rbp",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxe_stress4, . - fxe_stress4",
    // A return probe's function: both the entry and the ret are jumps.
    ".globl fxe_kret",
    ".type fxe_kret,@function",
    "fxe_kret:",
    "push rbp",
    "mov rbp, rsp",
    "push rbx",
    "lea rax, [rdi + rsi * 2]",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size fxe_kret, . - fxe_kret",
    // lea (3 bytes); ret: fewer than five bytes lead to the ret.
    ".globl fxe_short",
    ".type fxe_short,@function",
    "fxe_short:",
    "lea eax, [rdi + rsi]",
    "ret",
    ".size fxe_short, . - fxe_short",
    // A branch to the ret, inside the window before it.
    ".globl fxe_branch",
    ".type fxe_branch,@function",
    "fxe_branch:",
    "mov rax, rdi",
    "test rsi, rsi",
    "jz 1f",
    "lea rax, [rdi + rsi + 1]",
    "1:",
    "ret",
    ".size fxe_branch, . - fxe_branch",
);

/// The rbx `fxe_call_with_rbx` gives the function to keep.
const RBX_BEFORE: u64 = 0x5eed_0fb0_c0ff_ee00;

extern "C" {
    fn fxe_call_with_rbx(a: u64, b: u64) -> u64;
    fn fxe_value(a: u64, b: u64) -> u64;
    fn fxe_stress(a: u64, b: u64) -> u64;
    fn fxe_stress4(a: u64, b: u64) -> u64;
    fn fxe_kret(a: u64, b: u64) -> u64;
    fn fxe_short(a: u64, b: u64) -> u64;
    fn fxe_branch(a: u64, b: u64) -> u64;
}

#[test]
fn a_probe_on_a_ret_is_a_jump_before_it_and_sees_the_registers_as_at_the_ret() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let f = addr(fx_push_push_mov);
    let (window, ret) = (f.offset(5), f.offset(12));
    let original = code(f, 13);
    assert_eq!(code(ret, 1), [0xc3]);
    let p = register(Kprobe::addr(ret).pre(move |r| {
        // At the ret: rip there, rax the result, rbx and rbp popped (rbx the caller's again),
        // the return address at rsp.
        // SAFETY: the stack pointer at a ret points to the return address.
        let back = unsafe { (r.rsp as *const u64).read() };
        if r.rip != ret.0 || r.rax != r.rdi + r.rsi + 13 || r.rbx != RBX_BEFORE || back < 0x1000 {
            WRONG.fetch_add(1, Relaxed);
        }
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    let row = list().into_iter().find(|i| i.addr == ret).expect("listed at the ret");
    assert_eq!(row.jump, Ok(()));
    // The jump is at the window's start; the ret keeps its armed int3 past the jump's bytes.
    assert_eq!((code(window, 1), code(ret, 1)), (vec![0xe9], vec![0xcc]));
    assert_eq!(code(f, 5), original[..5], "nothing before the window changes");
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(fxe_call_with_rbx, t, i) == t + i + 13)))
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "a call computed a wrong value");
    assert_eq!((HITS.load(Relaxed), p.hits(), p.nmissed(), WRONG.load(Relaxed)), (4 * CALLS, 4 * CALLS, 0, 0));
    drop(p);
    assert_eq!(code(f, 13), original, "original bytes back");
}

#[test]
fn a_pre_handler_at_the_ret_changes_what_the_caller_gets() {
    let ret = addr(fxe_value).offset(12);
    let p = register(Kprobe::addr(ret).pre(|r| {
        r.rax *= 2;
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxe_value, 1, 2), 2 * (1 + 2 + 17));
    drop(p);
    assert_eq!(call2(fxe_value, 1, 2), 1 + 2 + 17);
}

#[test]
fn a_return_probe_takes_both_its_entry_and_its_ret_through_jumps_and_counts_every_return() {
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let f = addr(fxe_kret);
    // push rbp; mov rbp,rsp; push rbx; lea (+5, 4 bytes); pop rbx; pop rbp; ret (+11).
    let (window, ret) = (f.offset(5), f.offset(11));
    let original = code(f, 12);
    let p = fixtures::checked(fxe_kret as *const (), |a| a + 2 * (a % 7), &WRONG, false);
    assert_eq!(*p.return_mode(), ReturnMode::Exits { sites: 1 });
    let jump = |a: Addr| list().into_iter().find(|i| i.addr == a).map(|i| i.jump).expect("a probe there");
    assert_eq!((jump(f), jump(ret)), (Ok(()), Ok(())), "the entry and the ret are jumps");
    assert_eq!((code(f, 1), code(window, 1)), (vec![0xe9], vec![0xe9]));
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                (0..CALLS).all(|i| call2(fxe_kret, i + t, (i + t) % 7) == i + t + 2 * ((i + t) % 7))
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "a call computed a wrong value");
    let st = p.stats();
    assert_eq!((st.returns, st.missed, WRONG.load(Relaxed), p.pending()), (4 * CALLS, 0, 0, 0));
    drop(p);
    assert_eq!(code(f, 12), original, "original bytes back");
}

#[test]
fn four_threads_call_while_another_optimizes_and_unoptimizes_an_exit_a_thousand_times() {
    // The ret past the jump's five bytes.
    optimize_and_unoptimize_an_exit(addr(fxe_stress), 1, 7, |t, n| assert_eq!(call2(fxe_stress, t, n), t + n + 5));
}

#[test]
fn four_threads_call_while_another_optimizes_and_unoptimizes_an_exit_under_the_jump_a_thousand_times() {
    // The ret is the jump's last byte: its int3 goes back with the window's bytes.
    optimize_and_unoptimize_an_exit(addr(fxe_stress4), 2, 6, |t, n| assert_eq!(call2(fxe_stress4, t, n), t + n));
}

/// Four threads call the function at `f` through `call` while this one makes a probe that
/// asks for int3 come and go on its ret (at `f + ret`, whose window starts at `f + window`)
/// a thousand times: the counting probe's jump turns into the ret's int3 and back each time.
/// Every call is a hit, none is missed, and the bytes are back once the probe goes.
fn optimize_and_unoptimize_an_exit(f: Addr, window: u64, ret: u64, call: fn(u64, u64)) {
    fixtures::optimize_and_unoptimize_under_four_callers_at(
        f.offset(ret),
        f.offset(window),
        f,
        ret as usize + 1,
        call,
        false,
    );
}

#[test]
fn a_short_exit_and_a_branch_into_the_window_stay_on_int3_with_the_reason_and_count() {
    let short = addr(fxe_short).offset(3);
    let p = register(Kprobe::addr(short).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(p.optimized(), Err(NotOptimized::ExitWindowTooShort { exit: short, start: addr(fxe_short) }));
    assert_eq!(code(short, 1), [0xcc]);
    assert_eq!(call2(fxe_short, 2, 3), 5);
    assert_eq!(p.hits(), 1);
    // mov (3); test (3); jz (2); lea (5) at +8; ret at +13, the jz's target.
    let ret = addr(fxe_branch).offset(13);
    let p = register(Kprobe::addr(ret).pre(|_| PreAction::Continue)).unwrap();
    match p.optimized() {
        Err(NotOptimized::BranchIntoWindow { target, .. }) => assert_eq!(target, ret),
        other => panic!("expected the branch into the window, got {other:?}"),
    }
    assert_eq!((call2(fxe_branch, 2, 0), call2(fxe_branch, 2, 3)), (2, 6));
    assert_eq!(p.hits(), 2);
}

#[test]
fn a_thread_parked_inside_an_exit_window_is_moved_into_the_detour_and_its_return_counts() {
    // fx_park: endbr64, push, mov, lea (+8), pop (+13), ret (+14): the exit window is +8..+14.
    let f = addr(fx_park);
    const AFTER: u64 = 10_000;
    // Between the pop and the ret: strictly inside the window, past its first instruction.
    let (p, runs) = fixtures::park_then_optimize(f.0 + 13, f.offset(14), AFTER);
    assert_eq!(code(f.offset(8), 1), [0xe9], "the jump is at the window's start");
    // The parked call reaches the ret through the detour's copy: its return is a hit, then
    // every later call's.
    assert_eq!((p.hits(), runs.load(Relaxed), p.nmissed()), (AFTER + 1, AFTER + 1, 0));
}
