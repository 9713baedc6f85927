//! A jump-optimized probe on a tail call (`jmp` to another function's first instruction)
//! keeps what an entry probe keeps, the registers the calling convention passes, not the
//! whole extended state: at a tail call only the callee's arguments are live, as at its
//! entry. A jump within the function, or into another function's middle, may carry any live
//! state and keeps it all. Each shape is checked with exact counts and results, and a `__m256`
//! argument passed through a probed tail call survives a handler that runs `vzeroupper`.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

std::arch::global_asm!(
    ".text",
    // fxt_tail32(a, b) = fxt_callee(a + 1, b) = a + 1 + 2b, through `jmp rel32` at +4.
    ".globl fxt_tail32",
    ".type fxt_tail32,@function",
    "fxt_tail32:",
    "add rdi, 1",
    ".byte 0xe9",
    ".long fxt_callee - . - 4",
    ".size fxt_tail32, . - fxt_tail32",
    ".globl fxt_callee",
    ".type fxt_callee,@function",
    "fxt_callee:",
    "lea rax, [rdi + rsi * 2]",
    "ret",
    ".size fxt_callee, . - fxt_callee",
    // fxt_tail8(a, b) = fxt_callee8(a + 1, b + 2) = a + 1 + 2(b + 2), through `jmp rel8` at
    // +13: too short for a jump, its window starts at the `add` before it (+9), after the
    // entry's (the 5-byte nop).
    ".globl fxt_tail8",
    ".type fxt_tail8,@function",
    "fxt_tail8:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "add rdi, 1",
    "add rsi, 2",
    ".byte 0xeb",
    ".byte fxt_callee8 - . - 1",
    ".size fxt_tail8, . - fxt_tail8",
    ".globl fxt_callee8",
    ".type fxt_callee8,@function",
    "fxt_callee8:",
    "lea rax, [rdi + rsi * 2]",
    "ret",
    ".size fxt_callee8, . - fxt_callee8",
    // fxt_inside(a, b) = a + 1 + 2b, through a `jmp rel32` at +8 to its own next instruction,
    // after an SSE instruction (the whole extended state may be live after it).
    ".globl fxt_inside",
    ".type fxt_inside,@function",
    "fxt_inside:",
    "xorps xmm15, xmm15",
    "add rdi, 1",
    ".byte 0xe9",
    ".long 1f - . - 4",
    "1:",
    "lea rax, [rdi + rsi * 2]",
    "ret",
    ".size fxt_inside, . - fxt_inside",
    // fxt_mid(a, b) = a + 1: an SSE instruction (the whole extended state may be live after
    // it), `lea`, then `jmp rel32` at +8 to fxt_callee's `ret`, the middle of another function.
    ".globl fxt_mid",
    ".type fxt_mid,@function",
    "fxt_mid:",
    "xorps xmm15, xmm15",
    "lea rax, [rdi + 1]",
    ".byte 0xe9",
    ".long fxt_callee + 4 - . - 4",
    ".size fxt_mid, . - fxt_mid",
    // fxt_m256_call(a, b) = a + b + 1: puts `a` in the upper half of ymm0 and calls
    // fxt_m256_tail(b), which tail-calls fxt_m256_callee(b + 1) with ymm0 as its `__m256`
    // argument; the callee adds the upper half to its `rdi`.
    ".globl fxt_m256_call",
    ".type fxt_m256_call,@function",
    "fxt_m256_call:",
    "push rbx",
    "vmovq xmm0, rdi",
    "vinsertf128 ymm0, ymm0, xmm0, 1",
    "mov rdi, rsi",
    "call fxt_m256_tail",
    "pop rbx",
    "ret",
    ".size fxt_m256_call, . - fxt_m256_call",
    ".globl fxt_m256_tail",
    ".type fxt_m256_tail,@function",
    "fxt_m256_tail:",
    "add rdi, 1",
    ".byte 0xe9",
    ".long fxt_m256_callee - . - 4",
    ".size fxt_m256_tail, . - fxt_m256_tail",
    ".globl fxt_m256_callee",
    ".type fxt_m256_callee,@function",
    "fxt_m256_callee:",
    "vextractf128 xmm1, ymm0, 1",
    "vmovq rax, xmm1",
    "add rax, rdi",
    "vzeroupper",
    "ret",
    ".size fxt_m256_callee, . - fxt_m256_callee",
    // fxt_back(a, b) = fxt_callee(a + 1, b), through a `jmp rel32` at +4 back to a function
    // placed before it.
    ".globl fxt_back",
    ".type fxt_back,@function",
    "fxt_back:",
    "add rdi, 1",
    ".byte 0xe9",
    ".long fxt_callee - . - 4",
    ".size fxt_back, . - fxt_back",
    // fxt_self(a, b) = a + b: adds b to a one at a time, through a `jmp rel32` at +13 back to
    // its own first instruction (a tail call to itself).
    ".globl fxt_self",
    ".type fxt_self,@function",
    "fxt_self:",
    "test rsi, rsi",
    "jz 1f",
    "sub rsi, 1",
    "add rdi, 1",
    ".byte 0xe9",
    ".long fxt_self - . - 4",
    "1:",
    "mov rax, rdi",
    "ret",
    ".size fxt_self, . - fxt_self",
    // fxt_hot(a, b) = a + 1 + 2b, after an SSE instruction, through a `jmp rel32` at +8 to
    // its cold part (at +13), a symbol of its own (as gcc names the code it moves out of a
    // function): not a tail call, and the cold part's first instruction (a 5-byte nop) not an
    // entry.
    ".globl fxt_hot",
    ".type fxt_hot,@function",
    "fxt_hot:",
    "xorps xmm15, xmm15",
    "add rdi, 1",
    ".byte 0xe9",
    ".long fxt_hot.cold - . - 4",
    ".size fxt_hot, . - fxt_hot",
    ".type fxt_hot.cold,@function",
    "fxt_hot.cold:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi * 2]",
    "ret",
    ".size fxt_hot.cold, . - fxt_hot.cold",
);

extern "C" {
    fn fxt_tail32(a: u64, b: u64) -> u64;
    fn fxt_tail8(a: u64, b: u64) -> u64;
    fn fxt_inside(a: u64, b: u64) -> u64;
    fn fxt_mid(a: u64, b: u64) -> u64;
    fn fxt_m256_call(a: u64, b: u64) -> u64;
    fn fxt_m256_tail(a: u64, b: u64) -> u64;
    fn fxt_back(a: u64, b: u64) -> u64;
    fn fxt_self(a: u64, b: u64) -> u64;
    fn fxt_hot(a: u64, b: u64) -> u64;
}

/// The tests share the engine's list: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The address `offset` bytes into `f`, where a `jmp` is.
fn jmp_at(f: unsafe extern "C" fn(u64, u64) -> u64, offset: u64) -> Addr {
    let at = addr(f).offset(offset);
    assert!(matches!(code(at, 1)[0], 0xe9 | 0xeb), "a jmp at {at:?}");
    at
}

/// The registered probe at `at`, as `list()` shows it.
fn listed(at: Addr) -> ProbeInfo {
    dprobe_inproc::list().into_iter().find(|i| i.addr == at).expect("listed")
}

/// Whether a detour inside a function keeps more than the calling convention's registers:
/// without AVX there is nothing more, and the tests below cannot tell the two apart.
fn whole_state_inside_functions() -> bool {
    let avx = std::arch::is_x86_feature_detected!("avx");
    if !avx {
        eprintln!("no AVX on this CPU: every detour keeps the same registers, the kinds are not told apart");
    }
    avx
}

/// A counting probe at `at` in `f`; calls, each result checked, and the hits (one a call).
fn count_at_jump(f: unsafe extern "C" fn(u64, u64) -> u64, at: Addr, expected: fn(u64, u64) -> u64) -> ProbeInfo {
    count_at_loop(f, at, expected, |_, _| 1)
}

/// [`count_at_jump`] with `jumps(a, b)` hits a call.
fn count_at_loop(
    f: unsafe extern "C" fn(u64, u64) -> u64,
    at: Addr,
    expected: fn(u64, u64) -> u64,
    jumps: fn(u64, u64) -> u64,
) -> ProbeInfo {
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let p = register(Kprobe::addr(at).pre(move |_| {
        counted.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let info = listed(at);
    const CALLS: u64 = 1_000;
    assert!((0..CALLS).all(|i| call2(f, i, 3 * i) == expected(i, 3 * i)), "a wrong result");
    let jumped: u64 = (0..CALLS).map(|i| jumps(i, 3 * i)).sum();
    assert_eq!((hits.load(Relaxed), p.hits(), p.nmissed()), (jumped, jumped, 0));
    drop(p);
    info
}

/// Each probe, named by what its `jmp` does, a jump whose detour keeps the whole extended
/// state (`whole`) or what an entry keeps.
fn assert_jumps_keeping(whole: bool, probes: &[(&str, ProbeInfo)]) {
    for (what, info) in probes {
        assert_eq!((&info.jump, info.whole_vector_state), (&Ok(()), whole), "{what}");
    }
}

#[test]
fn a_probe_on_a_tail_call_keeps_what_an_entry_keeps() {
    let _serial = serial();
    whole_state_inside_functions();
    let probes = [
        ("to the function after it", count_at_jump(fxt_tail32, jmp_at(fxt_tail32, 4), |a, b| a + 1 + 2 * b)),
        ("back to a function before it", count_at_jump(fxt_back, jmp_at(fxt_back, 4), |a, b| a + 1 + 2 * b)),
        ("to its own first instruction", count_at_loop(fxt_self, jmp_at(fxt_self, 13), |a, b| a + b, |_, b| b)),
    ];
    assert_jumps_keeping(false, &probes);
}

#[test]
fn a_jump_within_the_function_to_its_cold_part_or_into_another_ones_middle_keeps_the_whole_state() {
    let _serial = serial();
    let whole = whole_state_inside_functions();
    let cold_part = addr(fxt_hot).offset(13);
    assert_eq!(code(cold_part, 5), [0x0f, 0x1f, 0x44, 0x00, 0x00], "the cold part's nop");
    let probes = [
        ("a jump to its own next instruction", count_at_jump(fxt_inside, jmp_at(fxt_inside, 8), |a, b| a + 1 + 2 * b)),
        ("a jump into another function's middle", count_at_jump(fxt_mid, jmp_at(fxt_mid, 8), |a, _| a + 1)),
        ("a jump to its cold part", count_at_jump(fxt_hot, jmp_at(fxt_hot, 8), |a, b| a + 1 + 2 * b)),
        ("the cold part's first instruction", count_at_jump(fxt_hot, cold_part, |a, b| a + 1 + 2 * b)),
    ];
    assert_jumps_keeping(whole, &probes);
}

#[test]
fn a_return_probe_watches_both_tail_calls_through_jumps_that_keep_what_an_entry_keeps() {
    let _serial = serial();
    // fxt_tail32's tail call at +4 is inside the entry's five bytes, reached by an `add` alone:
    // the entry's jump takes its part (a probe of its own would keep the entry on int3).
    for (f, exit, expected) in [
        (fxt_tail32 as unsafe extern "C" fn(u64, u64) -> u64, 0, (|a, b| a + 1 + 2 * b) as fn(u64, u64) -> u64),
        (fxt_tail8, 13, |a, b| a + 1 + 2 * (b + 2)),
    ] {
        let seen = Arc::new(AtomicU64::new(0));
        let values = Arc::new(AtomicU64::new(0));
        let (s, v) = (seen.clone(), values.clone());
        let p = register_kretprobe(Kretprobe::addr(addr(f)).handler(move |regs, _| {
            s.fetch_add(1, Relaxed);
            v.fetch_add(regs.rax, Relaxed);
        }))
        .unwrap();
        assert!(matches!(p.return_mode(), ReturnMode::Exits { .. }), "watched at its exits");
        let info = listed(addr(f).offset(exit));
        assert_eq!((info.jump, info.whole_vector_state), (Ok(()), false), "the tail call at +{exit}");
        if exit == 0 {
            assert!(dprobe_inproc::list().iter().all(|i| i.addr != addr(f).offset(4)), "no probe of its own at +4");
        }
        const CALLS: u64 = 1_000;
        assert!((0..CALLS).all(|i| call2(f, 7, i) == expected(7, i)), "a wrong result");
        let values_returned: u64 = (0..CALLS).map(|i| expected(7, i)).sum();
        assert_eq!((seen.load(Relaxed), values.load(Relaxed), p.stats().returns), (CALLS, values_returned, CALLS));
        assert_eq!((p.stats().missed, p.stats().abandoned, p.pending()), (0, 0, 0));
    }
}

#[test]
fn a_m256_argument_passed_through_a_probed_tail_call_survives_a_handler_that_runs_vzeroupper() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the ymm case does not apply");
        return;
    }
    let _serial = serial();
    let at = addr(fxt_m256_tail).offset(4);
    let p = register(Kprobe::addr(at).pre(|_| {
        // SAFETY: AVX is present; vzeroupper only clears upper halves, which a library call
        // made by a handler may do.
        unsafe { std::arch::asm!("vzeroupper") };
        PreAction::Continue
    }))
    .unwrap();
    let info = listed(at);
    assert_eq!((info.jump, info.whole_vector_state), (Ok(()), false));
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(fxt_m256_call, t + 7, i) == t + 7 + i + 1)))
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "the argument's upper half was lost");
    assert_eq!((p.hits(), p.nmissed()), (4 * CALLS, 0));
}
