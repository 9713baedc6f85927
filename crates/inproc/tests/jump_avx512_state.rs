//! Jump-optimized probes inside functions on a CPU with AVX-512: the mask registers,
//! `zmm16`-`zmm31` and the upper halves of `zmm0`-`zmm15`, live across the probe, survive a
//! handler whose library calls change them, and those the program left zero stay zero, as
//! across the trap path's signal frame (`avx512_state_call` in `jump_stub.rs`, or `XSAVE`).
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Into `rcx` and `rax`: the OR of the mask registers k0-k7 (into k0, then `or rax`), then
/// which lanes of the OR of zmm16-zmm31 are nonzero (into `rcx`).
macro_rules! or_masks_and_high_zmm {
    () => {
        concat!(
            "korq k0, k0, k1\n korq k0, k0, k2\n korq k0, k0, k3\n korq k0, k0, k4\n",
            "korq k0, k0, k5\n korq k0, k0, k6\n korq k0, k0, k7\n",
            "kmovq rcx, k0\n or rax, rcx\n",
            "vporq zmm16, zmm16, zmm17\n vporq zmm16, zmm16, zmm18\n vporq zmm16, zmm16, zmm19\n",
            "vporq zmm16, zmm16, zmm20\n vporq zmm16, zmm16, zmm21\n vporq zmm16, zmm16, zmm22\n",
            "vporq zmm16, zmm16, zmm23\n vporq zmm16, zmm16, zmm24\n vporq zmm16, zmm16, zmm25\n",
            "vporq zmm16, zmm16, zmm26\n vporq zmm16, zmm16, zmm27\n vporq zmm16, zmm16, zmm28\n",
            "vporq zmm16, zmm16, zmm29\n vporq zmm16, zmm16, zmm30\n vporq zmm16, zmm16, zmm31\n",
            "vptestmq k1, zmm16, zmm16\n kmovq rcx, k1\n",
        )
    };
}

std::arch::global_asm!(
    // The state components in use at the probed `lea` of the fixtures that note them
    // (`XGETBV` with `ECX` = 1), OR-ed over every call: one word for each.
    ".pushsection .data",
    ".balign 8",
    ".globl fxz_in_use_live",
    "fxz_in_use_live: .quad 0",
    ".globl fxz_in_use_initial",
    "fxz_in_use_initial: .quad 0",
    ".globl fxz_in_use_whole",
    "fxz_in_use_whole: .quad 0",
    ".globl fxz_in_use_merge",
    "fxz_in_use_merge: .quad 0",
    ".popsection",
    // A zeroed area for XRSTOR: every component it names put in its initial state.
    ".pushsection .bss",
    ".balign 64",
    "fxz_initial: .zero 4096",
    ".popsection",
    ".text",
    // `a` in ymm5's upper half (AVX in use, the upper halves of zmm0-zmm15 not), `b` in k1,
    // `a` in every lane of zmm20 across the probed `lea`: returns a + b + 0x1000 + a + b + a.
    ".globl fxz_avx_live",
    ".type fxz_avx_live,@function",
    "fxz_avx_live:",
    "vzeroupper",
    "vmovq xmm6, rdi",
    "vinserti128 ymm5, ymm5, xmm6, 1",
    "kmovq k1, rsi",
    "vpbroadcastq zmm20, rdi",
    "mov r8, rdx",
    "mov ecx, 1",
    "xgetbv",
    "lock or [rip + fxz_in_use_live], rax",
    "lea rax, [rdi + rsi + 0x1000]",
    "vextracti128 xmm6, ymm5, 1",
    "vmovq rcx, xmm6",
    "add rax, rcx",
    "kmovq rcx, k1",
    "add rax, rcx",
    "vextracti64x4 ymm21, zmm20, 1",
    "vextracti32x4 xmm21, ymm21, 1",
    "vpextrq rcx, xmm21, 1",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxz_avx_live, . - fxz_avx_live",
    // AVX, the mask registers and all of AVX-512 in their initial state (XRSTOR from a zeroed
    // area) at the probed `lea`; after it, the OR of k0-k7, of zmm16-zmm31 and of the upper
    // halves of zmm0-zmm15 into rax: returns a + b + 0x1000 where they all stayed zero.
    ".globl fxz_initial_state",
    ".type fxz_initial_state,@function",
    "fxz_initial_state:",
    "mov r8, rdi",
    "mov r9, rsi",
    "mov eax, 0xe4",
    "xor edx, edx",
    "xrstor64 [rip + fxz_initial]",
    "mov ecx, 1",
    "xgetbv",
    "lock or [rip + fxz_in_use_initial], rax",
    "mov rdi, r8",
    "mov rsi, r9",
    "lea rax, [rdi + rsi + 0x1000]",
    or_masks_and_high_zmm!(),
    "or rax, rcx",
    "vpord zmm17, zmm0, zmm1",
    "vpord zmm17, zmm17, zmm2",
    "vpord zmm17, zmm17, zmm3",
    "vpord zmm17, zmm17, zmm4",
    "vpord zmm17, zmm17, zmm5",
    "vpord zmm17, zmm17, zmm6",
    "vpord zmm17, zmm17, zmm7",
    "vpord zmm17, zmm17, zmm8",
    "vpord zmm17, zmm17, zmm9",
    "vpord zmm17, zmm17, zmm10",
    "vpord zmm17, zmm17, zmm11",
    "vpord zmm17, zmm17, zmm12",
    "vpord zmm17, zmm17, zmm13",
    "vpord zmm17, zmm17, zmm14",
    "vpord zmm17, zmm17, zmm15",
    // Lanes 2-7: bits 128-511 (the handler's xmm registers are the frame's, not checked).
    "vptestmq k1, zmm17, zmm17",
    "kmovq rcx, k1",
    "and ecx, 0xfc",
    "shl rcx, 32",
    "or rax, rcx",
    "kxorq k0, k0, k0",
    "kxorq k1, k1, k1",
    "vzeroupper",
    "ret",
    ".size fxz_initial_state, . - fxz_initial_state",
    // Keeps `a` in k1 and `b` in k7 across the probed `lea`: returns a + b + 0x1000 + a + b.
    ".globl fxz_masks",
    ".type fxz_masks,@function",
    "fxz_masks:",
    "kmovq k1, rdi",
    "kmovq k7, rsi",
    "lea rax, [rdi + rsi + 0x1000]",
    "kmovq rcx, k1",
    "add rax, rcx",
    "kmovq rcx, k7",
    "add rax, rcx",
    "ret",
    ".size fxz_masks, . - fxz_masks",
    // Keeps `a` in bits 448-511 of zmm31 and `b` in zmm16 across the probed `lea`: returns
    // a + b + 0x1000 + a + b.
    ".globl fxz_high_zmm",
    ".type fxz_high_zmm,@function",
    "fxz_high_zmm:",
    "vmovq xmm17, rdi",
    "vpbroadcastq zmm31, xmm17",
    "vmovq xmm16, rsi",
    "lea rax, [rdi + rsi + 0x1000]",
    "vextracti64x4 ymm17, zmm31, 1",
    "vextracti32x4 xmm17, ymm17, 1",
    "vpextrq rcx, xmm17, 1",
    "add rax, rcx",
    "vmovq rcx, xmm16",
    "add rax, rcx",
    "ret",
    ".size fxz_high_zmm, . - fxz_high_zmm",
    // Keeps `a` in bits 256-319 of zmm2 (the upper halves of zmm0-zmm15 in use): returns
    // a + b + 0x1000 + a.
    ".globl fxz_zmm_upper",
    ".type fxz_zmm_upper,@function",
    "fxz_zmm_upper:",
    "vmovq xmm3, rdi",
    "vinserti64x4 zmm2, zmm2, ymm3, 1",
    "lea rax, [rdi + rsi + 0x1000]",
    "vextracti64x4 ymm3, zmm2, 1",
    "vmovq rcx, xmm3",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxz_zmm_upper, . - fxz_zmm_upper",
    // `a` in every lane of zmm2, `b` in every lane of zmm15 (the upper halves of zmm0-zmm15
    // in use), `a` in k3 and 1.0 on the x87 stack across the probed `lea`: returns
    // a + b + 0x1000, plus 0xff for each of zmm2 and zmm15 (<< 8) whose lanes all came back,
    // plus k3, plus 0x10000 where 1.0 came back.
    ".globl fxz_zmm_whole",
    ".type fxz_zmm_whole,@function",
    "fxz_zmm_whole:",
    "vpbroadcastq zmm2, rdi",
    "vpbroadcastq zmm15, rsi",
    "kmovq k3, rdi",
    "fld1",
    "mov ecx, 1",
    "xgetbv",
    "lock or [rip + fxz_in_use_whole], rax",
    "lea rax, [rdi + rsi + 0x1000]",
    "vpbroadcastq zmm16, rdi",
    "vpcmpeqq k1, zmm2, zmm16",
    "kmovq rcx, k1",
    "add rax, rcx",
    "vpbroadcastq zmm16, rsi",
    "vpcmpeqq k1, zmm15, zmm16",
    "kmovq rcx, k1",
    "shl rcx, 8",
    "add rax, rcx",
    "kmovq rcx, k3",
    "add rax, rcx",
    // 1.0 popped: an empty stack (the value lost) stores the indefinite NaN instead.
    "fstp qword ptr [rsp - 8]",
    "mov rdx, 0x3ff0000000000000",
    "cmp [rsp - 8], rdx",
    "sete cl",
    "movzx ecx, cl",
    "shl ecx, 16",
    "add rax, rcx",
    "kxorq k1, k1, k1",
    "kxorq k3, k3, k3",
    "vzeroupper",
    "ret",
    ".size fxz_zmm_whole, . - fxz_zmm_whole",
    // `a` in every lane of zmm2 across the probed `lea`, whose handler writes the frame's
    // xmm2: returns a + b + 0x1000, plus the mask of zmm2's lanes still `a` (0xfc: all but
    // the two the handler wrote), plus those two lanes.
    ".globl fxz_zmm_merge",
    ".type fxz_zmm_merge,@function",
    "fxz_zmm_merge:",
    "vpbroadcastq zmm2, rdi",
    "mov ecx, 1",
    "xgetbv",
    "lock or [rip + fxz_in_use_merge], rax",
    "lea rax, [rdi + rsi + 0x1000]",
    "vpbroadcastq zmm16, rdi",
    "vpcmpeqq k1, zmm2, zmm16",
    "kmovq rcx, k1",
    "add rax, rcx",
    "vmovq rcx, xmm2",
    "add rax, rcx",
    "vpextrq rcx, xmm2, 1",
    "add rax, rcx",
    "kxorq k1, k1, k1",
    "vzeroupper",
    "ret",
    ".size fxz_zmm_merge, . - fxz_zmm_merge",
    // Zeroes k0-k7 and zmm16-zmm31, then, after the probed `lea`, ORs them all into rax's
    // value: returns a + b + 0x1000 where they stayed zero.
    ".globl fxz_zeroed",
    ".type fxz_zeroed,@function",
    "fxz_zeroed:",
    "kxorq k0, k0, k0",
    "kxorq k1, k1, k1",
    "kxorq k2, k2, k2",
    "kxorq k3, k3, k3",
    "kxorq k4, k4, k4",
    "kxorq k5, k5, k5",
    "kxorq k6, k6, k6",
    "kxorq k7, k7, k7",
    "vpxord zmm16, zmm16, zmm16",
    "vpxord zmm17, zmm17, zmm17",
    "vpxord zmm18, zmm18, zmm18",
    "vpxord zmm19, zmm19, zmm19",
    "vpxord zmm20, zmm20, zmm20",
    "vpxord zmm21, zmm21, zmm21",
    "vpxord zmm22, zmm22, zmm22",
    "vpxord zmm23, zmm23, zmm23",
    "vpxord zmm24, zmm24, zmm24",
    "vpxord zmm25, zmm25, zmm25",
    "vpxord zmm26, zmm26, zmm26",
    "vpxord zmm27, zmm27, zmm27",
    "vpxord zmm28, zmm28, zmm28",
    "vpxord zmm29, zmm29, zmm29",
    "vpxord zmm30, zmm30, zmm30",
    "vpxord zmm31, zmm31, zmm31",
    "lea rax, [rdi + rsi + 0x1000]",
    or_masks_and_high_zmm!(),
    "or rax, rcx",
    "ret",
    ".size fxz_zeroed, . - fxz_zeroed",
    // What a handler's library calls may do (the C library's EVEX string functions use the
    // mask registers and zmm16-zmm31): every mask register and zmm16-zmm31 set to all ones,
    // and a few of zmm0-zmm15 too, their upper halves left dirty.
    ".globl fxz_dirty",
    ".type fxz_dirty,@function",
    "fxz_dirty:",
    "kxnorq k0, k0, k0",
    "kxnorq k1, k1, k1",
    "kxnorq k2, k2, k2",
    "kxnorq k3, k3, k3",
    "kxnorq k4, k4, k4",
    "kxnorq k5, k5, k5",
    "kxnorq k6, k6, k6",
    "kxnorq k7, k7, k7",
    "vpternlogd zmm16, zmm16, zmm16, 0xff",
    "vpternlogd zmm17, zmm17, zmm17, 0xff",
    "vpternlogd zmm18, zmm18, zmm18, 0xff",
    "vpternlogd zmm19, zmm19, zmm19, 0xff",
    "vpternlogd zmm20, zmm20, zmm20, 0xff",
    "vpternlogd zmm21, zmm21, zmm21, 0xff",
    "vpternlogd zmm22, zmm22, zmm22, 0xff",
    "vpternlogd zmm23, zmm23, zmm23, 0xff",
    "vpternlogd zmm24, zmm24, zmm24, 0xff",
    "vpternlogd zmm25, zmm25, zmm25, 0xff",
    "vpternlogd zmm26, zmm26, zmm26, 0xff",
    "vpternlogd zmm27, zmm27, zmm27, 0xff",
    "vpternlogd zmm28, zmm28, zmm28, 0xff",
    "vpternlogd zmm29, zmm29, zmm29, 0xff",
    "vpternlogd zmm30, zmm30, zmm30, 0xff",
    "vpternlogd zmm31, zmm31, zmm31, 0xff",
    "vpternlogd zmm0, zmm0, zmm0, 0xff",
    "vpternlogd zmm1, zmm1, zmm1, 0xff",
    "vpternlogd zmm2, zmm2, zmm2, 0xff",
    "vpternlogd zmm3, zmm3, zmm3, 0xff",
    "vpternlogd zmm5, zmm5, zmm5, 0xff",
    "vpternlogd zmm15, zmm15, zmm15, 0xff",
    "ret",
    ".size fxz_dirty, . - fxz_dirty",
);

extern "C" {
    static fxz_in_use_live: u64;
    static fxz_in_use_whole: u64;
    static fxz_in_use_merge: u64;
    static fxz_in_use_initial: u64;
    fn fxz_avx_live(a: u64, b: u64) -> u64;
    fn fxz_initial_state(a: u64, b: u64) -> u64;
    fn fxz_masks(a: u64, b: u64) -> u64;
    fn fxz_high_zmm(a: u64, b: u64) -> u64;
    fn fxz_zmm_upper(a: u64, b: u64) -> u64;
    fn fxz_zmm_whole(a: u64, b: u64) -> u64;
    fn fxz_zmm_merge(a: u64, b: u64) -> u64;
    fn fxz_zeroed(a: u64, b: u64) -> u64;
    fn fxz_dirty();
}

fn avx512() -> bool {
    let there = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw");
    if !there {
        eprintln!("no AVX-512 (with AVX512BW) on this CPU: the case does not apply");
    }
    there
}

/// A jump-optimized probe on `f`'s `lea` (its first, inside the function) whose handler
/// dirties the AVX-512 state (`fxz_dirty`); four threads call `f(a, b)` and check each result
/// against `expected(a, b)`.
fn survives(f: unsafe extern "C" fn(u64, u64) -> u64, expected: fn(u64, u64) -> u64) {
    survives_changing(f, expected, |_| {});
}

/// The same with a handler that also runs `change` on the registers.
fn survives_changing(
    f: unsafe extern "C" fn(u64, u64) -> u64,
    expected: fn(u64, u64) -> u64,
    change: fn(&mut dprobe_inproc::Regs),
) {
    let lea = code(addr(f), 256).windows(3).position(|w| w == [0x48, 0x8d, 0x84]).expect("the lea");
    assert!(lea > 0, "inside the function");
    let at = addr(f).offset(lea as u64);
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let p = register(Kprobe::addr(at).pre(move |regs| {
        change(regs);
        // SAFETY: the fixture only writes registers the calling convention lets a callee
        // change (the mask registers, zmm16-zmm31, the upper halves of zmm2 and zmm3).
        unsafe { fxz_dirty() };
        counted.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((p.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "a jump");
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                (0..CALLS).map(|i| (t + 7, i + 3)).find(|&(a, b)| call2(f, a, b) != expected(a, b))
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), None, "a register live across the probe changed");
    }
    assert_eq!((hits.load(Relaxed), p.hits()), (4 * CALLS, 4 * CALLS));
}

#[test]
fn mask_registers_live_across_the_probe_survive() {
    if avx512() {
        survives(fxz_masks, |a, b| 2 * (a + b) + 0x1000);
    }
}

#[test]
fn zmm16_to_zmm31_live_across_the_probe_survive_whole() {
    if avx512() {
        survives(fxz_high_zmm, |a, b| 2 * (a + b) + 0x1000);
    }
}

#[test]
fn the_upper_halves_of_zmm0_to_zmm15_live_across_the_probe_survive() {
    if avx512() {
        survives(fxz_zmm_upper, |a, b| 2 * a + b + 0x1000);
    }
}

#[test]
fn mask_registers_and_zmm16_to_zmm31_left_zero_stay_zero() {
    if avx512() {
        survives(fxz_zeroed, |a, b| a + b + 0x1000);
    }
}

/// The state components a fixture noted in use at its probe so far.
fn noted_in_use(word: *const u64) -> u64 {
    // SAFETY: a word of the fixtures' data, written with locked ORs.
    unsafe { std::ptr::read_volatile(word) }
}

/// AMX's tiles: what sends a hit to `XSAVE` of the whole state.
const XSAVE_PATH: u64 = 0x6_0000;

#[test]
fn live_ymm_upper_halves_masks_and_zmm16_to_zmm31_survive_together() {
    if avx512() {
        survives(fxz_avx_live, |a, b| 3 * a + 2 * b + 0x1000);
        let seen = noted_in_use(&raw const fxz_in_use_live);
        // AVX, the mask registers and zmm16-zmm31 in use: every branch that keeps them.
        assert_eq!(seen & 0xa4, 0xa4, "in use at the probe: {seen:#x}");
        assert_eq!(seen & XSAVE_PATH, 0, "in use at the probe: {seen:#x}");
    }
}

#[test]
fn state_in_its_initial_state_is_in_its_initial_state_after_handlers_that_dirty_it() {
    if avx512() {
        survives(fxz_initial_state, |a, b| a + b + 0x1000);
        let seen = noted_in_use(&raw const fxz_in_use_initial);
        // The branches that zero what was not in use, and the one without AVX.
        assert_eq!(seen & 0xe4, 0, "in use at the probe: {seen:#x}");
    }
}

#[test]
fn zmm0_to_zmm15_masks_and_x87_live_across_the_probe_survive_whole() {
    if avx512() {
        survives(fxz_zmm_whole, |a, b| 2 * a + b + 0x1000 + 0xffff + 0x1_0000);
        let seen = noted_in_use(&raw const fxz_in_use_whole);
        // The upper halves of zmm0-zmm15, the mask registers and x87 in use: the branch that
        // keeps zmm0-zmm15 whole, and within it those that keep the others.
        assert_eq!(seen & 0x61, 0x61, "in use at the probe: {seen:#x}");
        assert_eq!(seen & XSAVE_PATH, 0, "in use at the probe: {seen:#x}");
    }
}

#[test]
fn a_handler_s_change_of_xmm2_is_merged_into_zmm2_kept_whole() {
    if avx512() {
        const LOW: u128 = 0x2222 << 64 | 0x1111;
        survives_changing(fxz_zmm_merge, |a, b| a + b + 0x1000 + 0xfc + 0x1111 + 0x2222, |regs| regs.xmm[2] = LOW);
        let seen = noted_in_use(&raw const fxz_in_use_merge);
        assert_eq!(seen & 0x40, 0x40, "the upper halves of zmm0-zmm15 in use at the probe: {seen:#x}");
    }
}
