//! A jump-optimized probe reached from its function's entry by instructions on the general
//! registers alone keeps what an entry probe keeps (`xmm0`-`xmm15`, the vector arguments
//! whole), not the whole extended state: nothing else can be live there yet. The C library's
//! `syscall`, probed by dprobe's agent past its argument moves, is such a place. A branch
//! landing between the entry and the probe, or a vector instruction before it, and the probe
//! keeps the whole state. A `__m256` argument passed through the first kind survives a handler
//! that runs `vzeroupper`.
mod fixtures;
use fixtures::{addr, call2};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

std::arch::global_asm!(
    ".text",
    // fes_moves(a, b) = a + 2b: moves, then the probed `lea` at +6.
    ".globl fes_moves",
    ".type fes_moves,@function",
    "fes_moves:",
    "mov rax, rdi",
    "mov rcx, rsi",
    "lea rax, [rax + rcx * 2]",
    "ret",
    ".size fes_moves, . - fes_moves",
    // fes_loop(a, b) = a + 2b: the same, with a loop back to +3 taken once (b's second half
    // added on the second pass): a branch lands between the entry and the probe.
    ".globl fes_loop",
    ".type fes_loop,@function",
    "fes_loop:",
    "mov rax, rdi",
    "mov r8, 2",
    "1:",
    "lea rax, [rax + rsi]",
    "dec r8",
    "jnz 1b",
    "ret",
    ".size fes_loop, . - fes_loop",
    // fes_vector(a, b) = a + 2b, after an SSE instruction.
    ".globl fes_vector",
    ".type fes_vector,@function",
    "fes_vector:",
    "xorps xmm15, xmm15",
    "mov rax, rdi",
    "lea rax, [rax + rsi * 2]",
    "ret",
    ".size fes_vector, . - fes_vector",
    // fes_m256(a, b) = a + b + a: ymm0's upper half holds `a` (a `__m256` argument's) across
    // the probed `lea` at +3, after an integer move.
    ".globl fes_m256",
    ".type fes_m256,@function",
    "fes_m256:",
    "mov rax, rdi",
    "lea rax, [rax + rsi]",
    "vextractf128 xmm1, ymm0, 1",
    "vmovq rcx, xmm1",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fes_m256, . - fes_m256",
    // Puts `a` in ymm0's upper half, then calls fes_m256(a, b).
    ".globl fes_m256_call",
    ".type fes_m256_call,@function",
    "fes_m256_call:",
    "vmovq xmm1, rdi",
    "vinsertf128 ymm0, ymm0, xmm1, 1",
    "jmp fes_m256",
    ".size fes_m256_call, . - fes_m256_call",
);

extern "C" {
    fn fes_moves(a: u64, b: u64) -> u64;
    fn fes_loop(a: u64, b: u64) -> u64;
    fn fes_vector(a: u64, b: u64) -> u64;
    fn fes_m256_call(a: u64, b: u64) -> u64;
    fn fes_m256(a: u64, b: u64) -> u64;
}

/// A probe at `offset` in `f` whose handler runs `handler`; `CALLS` calls of `called` (`f`, or
/// a function that calls it), each result checked against `expected`, each hitting the probe
/// `hits_a_call` times: whether its detour keeps the whole extended state.
fn whole_state_at(
    f: unsafe extern "C" fn(u64, u64) -> u64,
    called: unsafe extern "C" fn(u64, u64) -> u64,
    offset: u64,
    hits_a_call: u64,
    expected: fn(u64, u64) -> u64,
    handler: fn(),
) -> bool {
    const CALLS: u64 = 1_000;
    let at = addr(f).offset(offset);
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let p = register(Kprobe::addr(at).pre(move |_| {
        counted.fetch_add(1, Relaxed);
        handler();
        PreAction::Continue
    }))
    .unwrap();
    let info = dprobe_inproc::list().into_iter().find(|i| i.addr == at).expect("listed");
    assert_eq!(info.jump, Ok(()), "jump-optimized");
    assert!((1..=CALLS).all(|i| call2(called, i, 3 * i) == expected(i, 3 * i)), "a wrong result");
    assert_eq!((hits.load(Relaxed), p.hits()), (CALLS * hits_a_call, CALLS * hits_a_call));
    info.whole_vector_state
}

/// What a handler's library call may end with.
fn vzeroupper() {
    // SAFETY: only zeroes the upper halves of the vector registers, which the detour keeps
    // where they may be live.
    unsafe { std::arch::asm!("vzeroupper") };
}

fn avx() -> bool {
    let avx = std::arch::is_x86_feature_detected!("avx");
    if !avx {
        eprintln!("no AVX on this CPU: every detour keeps the same registers, the kinds are not told apart");
    }
    avx
}

#[test]
fn past_moves_of_general_registers_a_probe_keeps_what_an_entry_keeps() {
    if !avx() {
        return;
    }
    assert!(!whole_state_at(fes_moves, fes_moves, 6, 1, |a, b| a + 2 * b, || {}), "after moves alone");
    assert!(whole_state_at(fes_loop, fes_loop, 10, 2, |a, b| a + 2 * b, || {}), "a loop lands between");
    assert!(whole_state_at(fes_vector, fes_vector, 7, 1, |a, b| a + 2 * b, || {}), "after an SSE instruction");
}

#[test]
fn a_vector_argument_survives_a_probe_past_the_moves_whose_handler_runs_vzeroupper() {
    if !avx() {
        return;
    }
    let whole = whole_state_at(fes_m256, fes_m256_call, 3, 1, |a, b| a + b + a, vzeroupper);
    assert!(!whole, "what an entry keeps");
}
