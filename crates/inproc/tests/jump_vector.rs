//! Jump-optimized probes inside functions keep the whole extended state (XSAVE): upper halves
//! of `ymm` registers and AVX-512's `zmm16`-`zmm31` live across the probe survive a handler
//! that changes them, as they do across the trap path's signal frame.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // Keeps `a` in the upper half of ymm0 across the probed `lea` (inside the function):
    // returns a + b + 0x1000 + a.
    ".globl fxv_ymm",
    ".type fxv_ymm,@function",
    "fxv_ymm:",
    "vmovq xmm0, rdi",
    "vinsertf128 ymm0, ymm0, xmm0, 1",
    "lea rax, [rdi + rsi + 0x1000]",
    "vextractf128 xmm1, ymm0, 1",
    "vmovq rcx, xmm1",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxv_ymm, . - fxv_ymm",
    // Keeps `a` in zmm16 (which no SSE or AVX instruction names) across the probed `lea`:
    // returns a + b + 0x1000 + a.
    ".globl fxv_zmm16",
    ".type fxv_zmm16,@function",
    "fxv_zmm16:",
    "vmovq xmm16, rdi",
    "lea rax, [rdi + rsi + 0x1000]",
    "vmovq rcx, xmm16",
    "add rax, rcx",
    "ret",
    ".size fxv_zmm16, . - fxv_zmm16",
    // A `__m256` argument at a function's entry: returns the upper half of ymm0's low 64 bits
    // (the probe on its entry nop, a jump).
    ".globl fxv_m256_arg",
    ".type fxv_m256_arg,@function",
    "fxv_m256_arg:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "vextractf128 xmm1, ymm0, 1",
    "vmovq rax, xmm1",
    "vzeroupper",
    "ret",
    ".size fxv_m256_arg, . - fxv_m256_arg",
    // Calls it with `a` in ymm0's upper half: returns a + b.
    ".globl fxv_m256_call",
    ".type fxv_m256_call,@function",
    "fxv_m256_call:",
    "push rsi",
    "vmovq xmm0, rdi",
    "vinsertf128 ymm0, ymm0, xmm0, 1",
    "call fxv_m256_arg",
    "pop rsi",
    "add rax, rsi",
    "ret",
    ".size fxv_m256_call, . - fxv_m256_call",
    // Calls it with every upper half zero (`vzeroupper`, then a legacy SSE move that leaves
    // them so): returns b.
    ".globl fxv_m256_zero_call",
    ".type fxv_m256_zero_call,@function",
    "fxv_m256_zero_call:",
    "push rsi",
    "vzeroupper",
    "movq xmm0, rdi",
    "call fxv_m256_arg",
    "pop rsi",
    "add rax, rsi",
    "ret",
    ".size fxv_m256_zero_call, . - fxv_m256_zero_call",
    // Clears MXCSR's exception flags, then the probed 5-byte nop inside the function, then
    // returns MXCSR.
    ".globl fxv_mxcsr",
    ".type fxv_mxcsr,@function",
    "fxv_mxcsr:",
    "sub rsp, 8",
    "mov dword ptr [rsp], 0x1f80",
    "ldmxcsr [rsp]",
    ".globl fxv_mxcsr_probe",
    "fxv_mxcsr_probe:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "stmxcsr [rsp]",
    "mov eax, [rsp]",
    "add rsp, 8",
    "ret",
    ".size fxv_mxcsr, . - fxv_mxcsr",
    // MXCSR 0x5f80 (rounding up) across the probed 5-byte nop inside the function: returns
    // MXCSR then, and puts 0x1f80 back.
    ".globl fxv_mxcsr_up",
    ".type fxv_mxcsr_up,@function",
    "fxv_mxcsr_up:",
    "sub rsp, 8",
    "mov dword ptr [rsp], 0x5f80",
    "ldmxcsr [rsp]",
    ".globl fxv_mxcsr_up_probe",
    "fxv_mxcsr_up_probe:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "stmxcsr [rsp]",
    "mov eax, [rsp]",
    "mov dword ptr [rsp], 0x1f80",
    "ldmxcsr [rsp]",
    "add rsp, 8",
    "ret",
    ".size fxv_mxcsr_up, . - fxv_mxcsr_up",
    // MXCSR set to b, then a call of `fxv_mxcsr_leaf` (probed at its entry, where the cheaper
    // argument-keeping stubs run), with ymm3's upper half filled where `a` is odd (the stubs
    // then store the upper halves): returns what the leaf found, and puts 0x1f80 back.
    ".globl fxv_mxcsr_entry_call",
    ".type fxv_mxcsr_entry_call,@function",
    "fxv_mxcsr_entry_call:",
    "sub rsp, 8",
    "mov [rsp], esi",
    "ldmxcsr [rsp]",
    "test dil, 1",
    "jz 1f",
    "vxorps ymm3, ymm3, ymm3",
    "vcmpps ymm3, ymm3, ymm3, 0",
    "1:",
    "call fxv_mxcsr_leaf",
    "vzeroupper",
    "mov dword ptr [rsp], 0x1f80",
    "ldmxcsr [rsp]",
    "add rsp, 8",
    "ret",
    ".size fxv_mxcsr_entry_call, . - fxv_mxcsr_entry_call",
    // A 5-byte nop (the probe), then returns MXCSR.
    ".globl fxv_mxcsr_leaf",
    ".type fxv_mxcsr_leaf,@function",
    "fxv_mxcsr_leaf:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "sub rsp, 8",
    "stmxcsr [rsp]",
    "mov eax, [rsp]",
    "add rsp, 8",
    "ret",
    ".size fxv_mxcsr_leaf, . - fxv_mxcsr_leaf",
    // With `b` = 0, nothing on the x87 stack; with `b` = 1, 1.0 pushed on it before the
    // probed 5-byte nop inside the function and popped after. Returns the x87 control word
    // << 32 | the status word << 16 | the value popped (1: 1.0, 0: something else).
    ".globl fxv_x87",
    ".type fxv_x87,@function",
    "fxv_x87:",
    "sub rsp, 8",
    "xor ecx, ecx",
    "test rsi, rsi",
    "jz 1f",
    "fld1",
    "1:",
    ".globl fxv_x87_probe",
    "fxv_x87_probe:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "test rsi, rsi",
    "jz 2f",
    "fld1",
    "fcomip st, st(1)",
    "fstp st(0)",
    "sete cl",
    "2:",
    "fnstsw ax",
    "movzx eax, ax",
    "shl rax, 16",
    "or rax, rcx",
    "fnstcw [rsp]",
    "movzx ecx, word ptr [rsp]",
    "shl rcx, 32",
    "or rax, rcx",
    "add rsp, 8",
    "ret",
    ".size fxv_x87, . - fxv_x87",
    // Every upper half zero at the probed 5-byte nop inside the function; returns the upper
    // half of ymm0 after it (its low 64 bits).
    ".globl fxv_zero_inside",
    ".type fxv_zero_inside,@function",
    "fxv_zero_inside:",
    "vzeroupper",
    "movq xmm0, rdi",
    ".globl fxv_zero_inside_probe",
    "fxv_zero_inside_probe:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "vextractf128 xmm1, ymm0, 1",
    "vmovq rax, xmm1",
    "vzeroupper",
    "ret",
    ".size fxv_zero_inside, . - fxv_zero_inside",
    // A leaf that touches no vector register: returns a + b (the probe on its entry nop).
    ".globl fxv_leaf",
    ".type fxv_leaf,@function",
    "fxv_leaf:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxv_leaf, . - fxv_leaf",
    // Keeps `a` in the upper half of ymm8 across a call of it, as gcc's -fipa-ra allows a
    // caller that knows its callee: returns a + b + a.
    ".globl fxv_ymm8_across_call",
    ".type fxv_ymm8_across_call,@function",
    "fxv_ymm8_across_call:",
    "vmovq xmm1, rdi",
    "vinsertf128 ymm8, ymm8, xmm1, 1",
    "call fxv_leaf",
    "vextractf128 xmm1, ymm8, 1",
    "vmovq rcx, xmm1",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxv_ymm8_across_call, . - fxv_ymm8_across_call",
    // The same with a `__m512`: `a` in bits 256-319 of zmm0.
    ".globl fxv_m512_arg",
    ".type fxv_m512_arg,@function",
    "fxv_m512_arg:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "vextracti64x4 ymm1, zmm0, 1",
    "vmovq rax, xmm1",
    "vzeroupper",
    "ret",
    ".size fxv_m512_arg, . - fxv_m512_arg",
    ".globl fxv_m512_call",
    ".type fxv_m512_call,@function",
    "fxv_m512_call:",
    "push rsi",
    "vmovq xmm1, rdi",
    "vinserti64x4 zmm0, zmm0, ymm1, 1",
    "call fxv_m512_arg",
    "pop rsi",
    "add rax, rsi",
    "ret",
    ".size fxv_m512_call, . - fxv_m512_call",
    // The same shape with SSE only, for CPUs without AVX: xmm8 kept across the probe.
    ".globl fxv_xmm",
    ".type fxv_xmm,@function",
    "fxv_xmm:",
    "movq xmm8, rdi",
    "lea rax, [rdi + rsi + 0x1000]",
    "movq rcx, xmm8",
    "add rax, rcx",
    "ret",
    ".size fxv_xmm, . - fxv_xmm",
);

extern "C" {
    fn fxv_ymm(a: u64, b: u64) -> u64;
    fn fxv_zmm16(a: u64, b: u64) -> u64;
    fn fxv_xmm(a: u64, b: u64) -> u64;
    fn fxv_m256_arg();
    fn fxv_m256_call(a: u64, b: u64) -> u64;
    fn fxv_m256_zero_call(a: u64, b: u64) -> u64;
    fn fxv_leaf();
    fn fxv_mxcsr(a: u64, b: u64) -> u64;
    fn fxv_zero_inside(a: u64, b: u64) -> u64;
    fn fxv_zero_inside_probe();
    fn fxv_mxcsr_probe();
    fn fxv_mxcsr_up(a: u64, b: u64) -> u64;
    fn fxv_mxcsr_up_probe();
    fn fxv_mxcsr_entry_call(a: u64, mxcsr: u64) -> u64;
    fn fxv_mxcsr_leaf();
    fn fxv_x87(a: u64, b: u64) -> u64;
    fn fxv_x87_probe();
    fn fxv_ymm8_across_call(a: u64, b: u64) -> u64;
    fn fxv_m512_arg();
    fn fxv_m512_call(a: u64, b: u64) -> u64;
}

/// A probe at the entry of `arg`, whose handler runs `clobber`, while four threads call it
/// through `call` (`a` in the vector argument register, returns a + b).
fn argument_survives(arg: unsafe extern "C" fn(), call: unsafe extern "C" fn(u64, u64) -> u64, clobber: fn()) {
    survives_with(call, dprobe_inproc::Addr(arg as *const () as u64), clobber, 0, |a, b| a + b);
}

#[test]
fn a_m256_argument_survives_a_handler_that_runs_vzeroupper_at_the_entry() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the ymm case does not apply");
        return;
    }
    argument_survives(fxv_m256_arg, fxv_m256_call, || {
        // SAFETY: AVX is present; vzeroupper only clears upper halves.
        unsafe { std::arch::asm!("vzeroupper") };
    });
}

#[test]
fn a_ymm_register_a_caller_keeps_across_the_call_survives_a_handler_that_runs_vzeroupper() {
    if !std::arch::is_x86_feature_detected!("avx") || std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("not a CPU with AVX and without AVX-512: the ymm8 case does not apply");
        return;
    }
    survives_with(
        fxv_ymm8_across_call,
        dprobe_inproc::Addr(fxv_leaf as *const () as u64),
        || {
            // SAFETY: AVX is present; vzeroupper only clears upper halves.
            unsafe { std::arch::asm!("vzeroupper") };
        },
        0,
        |a, b| 2 * a + b,
    );
}

/// Fill `ymm0` with ones and leave it so, as a library call that forgets `vzeroupper` would.
fn dirty_ymm0() {
    // SAFETY: AVX is present (the callers check); ymm0 is caller-saved.
    unsafe { std::arch::asm!("vxorps ymm0, ymm0, ymm0", "vcmpps ymm0, ymm0, ymm0, 0", out("ymm0") _) };
}

#[test]
fn zero_upper_halves_at_an_entry_stay_zero_after_handlers_that_fill_them() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the ymm case does not apply");
        return;
    }
    // Where the CPU says the upper halves are unused, the stubs do not store them but zero
    // them after the handlers (pre and post): a handler that fills ymm0 must not reach the
    // function, which reads the upper half of ymm0 (zero) and returns it plus b.
    let at = dprobe_inproc::Addr(fxv_m256_arg as *const () as u64);
    let (pre, post) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicU64::new(0)));
    let (pre_runs, post_runs) = (pre.clone(), post.clone());
    let p = register(
        Kprobe::addr(at)
            .pre(move |_| {
                dirty_ymm0();
                pre_runs.fetch_add(1, Relaxed);
                PreAction::Continue
            })
            .post(move |_| {
                dirty_ymm0();
                post_runs.fetch_add(1, Relaxed);
            }),
    )
    .unwrap();
    assert_eq!((p.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "a jump");
    const CALLS: u64 = 50_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(fxv_m256_zero_call, t + 7, i) == i)))
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "a handler's ymm0 reached the function");
    assert_eq!((pre.load(Relaxed), post.load(Relaxed), p.hits()), (4 * CALLS, 4 * CALLS, 4 * CALLS));
    // And upper halves in use at the entry are kept whole by the same stubs.
    assert!((0..1000u64).all(|i| call2(fxv_m256_call, i + 1, i) == 2 * i + 1), "a __m256 argument was lost");
}

#[test]
fn a_m512_argument_survives_a_handler_that_runs_vzeroupper_at_the_entry() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512 on this CPU: the zmm case does not apply");
        return;
    }
    argument_survives(fxv_m512_arg, fxv_m512_call, || {
        // SAFETY: AVX is present; vzeroupper only clears upper halves.
        unsafe { std::arch::asm!("vzeroupper") };
    });
}

/// Where the probed `lea` is: after the instructions before it.
fn probed(f: unsafe extern "C" fn(u64, u64) -> u64, before: u64) -> dprobe_inproc::Addr {
    let a = addr(f).offset(before);
    assert_eq!(code(a, 3), [0x48, 0x8d, 0x84], "the lea");
    a
}

/// A jump-optimized probe at `at` whose pre-handler runs `clobber` (what a library call may
/// do to the vector registers) and adds `bump` to `rsi`; four threads call `f` and check every
/// result against `expected(a, b)`.
fn survives_with(
    f: unsafe extern "C" fn(u64, u64) -> u64,
    at: dprobe_inproc::Addr,
    clobber: fn(),
    bump: u64,
    expected: fn(u64, u64) -> u64,
) {
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let p = register(Kprobe::addr(at).pre(move |regs| {
        clobber();
        regs.rsi += bump;
        counted.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((p.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "a jump");
    const CALLS: u64 = 50_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).all(|i| call2(f, t + 7, i) == expected(t + 7, i))))
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "a vector register live across the probe was lost");
    assert_eq!((hits.load(Relaxed), p.hits(), p.nmissed()), (4 * CALLS, 4 * CALLS, 0));
}

/// Inside the function (the whole extended state kept): `f` returns a + b + 0x1000 + a, and
/// the handler adds one to `b`.
fn survives(f: unsafe extern "C" fn(u64, u64) -> u64, at: dprobe_inproc::Addr, clobber: fn()) {
    survives_with(f, at, clobber, 1, |a, b| 2 * a + b + 1 + 0x1000);
}

#[test]
fn the_upper_half_of_a_ymm_register_survives_a_handler_that_runs_vzeroupper() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the ymm case does not apply");
        return;
    }
    survives(fxv_ymm, probed(fxv_ymm, 5 + 6), || {
        // SAFETY: AVX is present; vzeroupper only clears upper halves, which the handler's
        // own code does not use.
        unsafe { std::arch::asm!("vzeroupper") };
    });
}

#[test]
fn zmm16_survives_a_handler_that_changes_it() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512 on this CPU: the zmm16 case does not apply");
        return;
    }
    survives(fxv_zmm16, probed(fxv_zmm16, 6), || {
        // SAFETY: AVX-512 is present; zmm16 is caller-saved and unused by the handler.
        unsafe { std::arch::asm!("vpxorq zmm16, zmm16, zmm16", out("zmm16") _) };
    });
}

#[test]
fn xmm8_survives_a_handler_that_changes_it() {
    survives(fxv_xmm, probed(fxv_xmm, 5), || {
        // SAFETY: SSE2 is part of x86-64; xmm8 is caller-saved.
        unsafe { std::arch::asm!("pxor xmm8, xmm8", out("xmm8") _) };
    });
}

/// A jump-optimized probe at `at` (inside a function, or at its entry) whose handler runs
/// `clobber`; four threads
/// call `f(t, b)` and check each result against `expected`.
fn inside_survives(
    f: unsafe extern "C" fn(u64, u64) -> u64,
    at: unsafe extern "C" fn(),
    b: u64,
    clobber: fn(),
    expected: u64,
) {
    let at = dprobe_inproc::Addr(at as *const () as u64);
    let p = register(Kprobe::addr(at).pre(move |_| {
        clobber();
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((p.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "a jump");
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..CALLS).map(|_| call2(f, t, b)).find(|&r| r != expected)))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().map(|r| format!("{r:#x}")), None, "expected {expected:#x} after every call");
    }
    assert_eq!(p.hits(), 4 * CALLS);
}

#[test]
fn mxcsr_flags_a_handler_raises_do_not_reach_the_function() {
    inside_survives(fxv_mxcsr, fxv_mxcsr_probe, 0, inexact_division, 0x1f80);
}

#[test]
fn a_handler_finds_mxcsr_at_reset_where_the_program_rounds_up() {
    handlers_find_mxcsr_at_reset(fxv_mxcsr_up, fxv_mxcsr_up_probe, 0);
}

/// `inside_survives` for a function that runs its probe with MXCSR rounding up (0x5f80, which
/// it returns): every handler must find MXCSR's control bits at reset, and raises a flag.
fn handlers_find_mxcsr_at_reset(f: unsafe extern "C" fn(u64, u64) -> u64, at: unsafe extern "C" fn(), b: u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static WRONG: AtomicU64 = AtomicU64::new(0);
    inside_survives(
        f,
        at,
        b,
        || {
            if !mxcsr_control_at_reset() {
                WRONG.fetch_add(1, Relaxed);
            }
            inexact_division();
        },
        0x5f80,
    );
    assert_eq!(WRONG.load(Relaxed), 0, "handlers that found the program's MXCSR");
}

/// An inexact division: sets MXCSR's precision flag (0x20).
fn inexact_division() {
    std::hint::black_box(std::hint::black_box(1.0f64) / std::hint::black_box(3.0f64));
}

/// Whether the calling handler finds MXCSR's control bits at reset, as a signal handler does
/// (the status flags aside).
fn mxcsr_control_at_reset() -> bool {
    let mut mxcsr = 0u32;
    // SAFETY: stores MXCSR into the local.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &raw mut mxcsr) };
    mxcsr & !0x3f == 0x1f80
}

/// `fxv_mxcsr_leaf` to probe, for one test at a time (each counts its probe's hits), on a CPU
/// with AVX (its caller fills an upper half); `None` elsewhere.
fn mxcsr_leaf_alone() -> Option<std::sync::MutexGuard<'static, ()>> {
    static MXCSR_LEAF: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the case does not apply");
        return None;
    }
    Some(MXCSR_LEAF.lock().unwrap_or_else(|e| e.into_inner()))
}

#[test]
fn mxcsr_flags_a_handler_raises_at_an_entry_do_not_reach_the_function() {
    let Some(_alone) = mxcsr_leaf_alone() else { return };
    inside_survives(fxv_mxcsr_entry_call, fxv_mxcsr_leaf, 0x1f80, inexact_division, 0x1f80);
}

#[test]
fn mxcsr_flags_a_post_handler_raises_at_an_entry_do_not_reach_the_function() {
    let Some(_alone) = mxcsr_leaf_alone() else { return };
    // The post stub, after the relocated nop: the upper halves in use on odd calls, as above.
    let at = dprobe_inproc::Addr(fxv_mxcsr_leaf as *const () as u64);
    let p = register(Kprobe::addr(at).pre(|_| PreAction::Continue).post(|_| inexact_division())).unwrap();
    assert_eq!(p.optimized(), Ok(()), "a jump");
    let wrong = (0..2000).map(|a| call2(fxv_mxcsr_entry_call, a, 0x1f80)).find(|&r| r != 0x1f80);
    assert_eq!(wrong.map(|r| format!("{r:#x}")), None, "MXCSR 0x1f80 after every call");
    assert_eq!(p.hits(), 2000);
}

#[test]
fn a_handler_at_an_entry_finds_mxcsr_at_reset_where_the_program_rounds_up() {
    let Some(_alone) = mxcsr_leaf_alone() else { return };
    handlers_find_mxcsr_at_reset(fxv_mxcsr_entry_call, fxv_mxcsr_leaf, 0x5f80);
}

/// The x87 control word at reset, and the status word with an empty stack.
const X87_CLEAN: u64 = 0x37f << 32;

#[test]
fn the_x87_stack_a_handler_leaves_a_value_on_is_put_back() {
    // Nothing on the program's x87 stack: the handler's leftover value must be gone, the
    // status word clean (its TOP back at 0).
    inside_survives(
        fxv_x87,
        fxv_x87_probe,
        0,
        || {
            // SAFETY: pushes 1.0 on the x87 stack and leaves it there, as a bad library call
            // might; no Rust code uses x87.
            unsafe { std::arch::asm!("fld1") };
        },
        X87_CLEAN,
    );
}

#[test]
fn a_value_on_the_x87_stack_survives_a_handler_that_fills_the_stack() {
    // 1.0 live on the program's x87 stack: a handler that pushes eight values (overflowing,
    // raising the invalid-operation flag) and pops eight must not change it or the flags.
    inside_survives(fxv_x87, fxv_x87_probe, 1, fixtures::x87::fill_the_x87_stack, X87_CLEAN | 1);
}

#[test]
fn zero_upper_halves_inside_a_function_stay_zero_after_a_handler_that_fills_them() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: the ymm case does not apply");
        return;
    }
    inside_survives(fxv_zero_inside, fxv_zero_inside_probe, 0, dirty_ymm0, 0);
}
