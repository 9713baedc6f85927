//! The AVX stubs of `jump_stub.rs`, chosen where the kernel enabled x87, SSE and AVX alone,
//! run on a CPU with more, where they are never chosen:
//! - the whole-state stub (`avx_state_call`): x87 kept where in use, put back initial and
//!   unused where it was initial, with the `ymm` upper halves live;
//! - the argument-keeping stub at an entry (`ymm_args_call`): a `__m256` argument, a `ymm`
//!   register its caller keeps across the call, and `MXCSR` survive a handler.
//!
//! The handlers here touch neither the mask registers nor `zmm16`-`zmm31`, which these stubs
//! do not keep.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};

use crate::jump_stub::{avx512_entry_stub, stubs, AVX_STUB_FORCED};
use dprobe_arch::VectorState;
#[path = "../tests/fixtures/x87.rs"]
mod x87;
use crate::{register, Addr, Kprobe, PreAction, Probe};
use x87::{fill_the_x87_stack, fx87_initial, put_x87_back_unused, take_a_signal, x87_in_use};

std::arch::global_asm!(
    ".text",
    // `a` in ymm5's upper half and 1.0 on the x87 stack across the probed `lea`: returns
    // 1.0's bits + `a`.
    ".globl fxa_value",
    ".type fxa_value,@function",
    "fxa_value:",
    "vmovq xmm6, rdi",
    "vinsertf128 ymm5, ymm5, xmm6, 1",
    "fld1",
    "lea rax, [rdi + rsi + 0x1000]",
    "fstp qword ptr [rsp - 8]",
    "mov rax, [rsp - 8]",
    "vextractf128 xmm6, ymm5, 1",
    "vmovq rcx, xmm6",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxa_value, . - fxa_value",
    // `a` in both halves of ymm0 (a `__m256` argument) and `b` in ymm9's upper half (a
    // register the caller keeps across the call, as gcc's `-fipa-ra` may), or with `b` = 0
    // every upper half zero (`a` in ymm0's low half alone), MXCSR's flags cleared, then a call
    // of `fxa_m256_leaf` (probed at its entry): returns MXCSR after the call << 40 | what the
    // leaf returned + b.
    ".globl fxa_m256_call",
    ".type fxa_m256_call,@function",
    "fxa_m256_call:",
    "sub rsp, 8",
    "mov dword ptr [rsp], 0x1f80",
    "ldmxcsr [rsp]",
    "vmovq xmm0, rdi",
    "vinsertf128 ymm0, ymm0, xmm0, 1",
    "vmovq xmm9, rsi",
    "vinsertf128 ymm9, ymm9, xmm9, 1",
    "test rsi, rsi",
    "jnz 1f",
    "vzeroupper",
    "1:",
    "call fxa_m256_leaf",
    "vextractf128 xmm9, ymm9, 1",
    "vmovq rcx, xmm9",
    "add rax, rcx",
    "stmxcsr [rsp]",
    "mov ecx, [rsp]",
    "shl rcx, 40",
    "or rax, rcx",
    "add rsp, 8",
    "vzeroupper",
    "ret",
    ".size fxa_m256_call, . - fxa_m256_call",
    // A 5-byte nop (the probe), then the sum of ymm0's two halves' low words; touches no
    // other vector register.
    ".globl fxa_m256_leaf",
    ".type fxa_m256_leaf,@function",
    "fxa_m256_leaf:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "vmovq rax, xmm0",
    "vextractf128 xmm0, ymm0, 1",
    "vmovq rcx, xmm0",
    "add rax, rcx",
    "ret",
    ".size fxa_m256_leaf, . - fxa_m256_leaf",
);

extern "C" {
    fn fxa_value(a: u64, b: u64) -> u64;
    fn fxa_m256_call(a: u64, b: u64) -> u64;
    fn fxa_m256_leaf();
}

fn avx() -> bool {
    let there = std::arch::is_x86_feature_detected!("avx") && x87_in_use().is_some();
    if !there {
        eprintln!("no AVX, or the CPU does not say which state is in use: the case does not apply");
    }
    there
}

/// A jump-optimized probe through the AVX stub on `f`'s `lea`, `before` bytes in.
fn probe(f: unsafe extern "C" fn(u64, u64) -> u64, before: u64, handler: fn()) -> Probe {
    let at = Addr(f as usize as u64 + before);
    // SAFETY: the fixture's code, mapped.
    assert_eq!(unsafe { std::ptr::read_volatile(at.0 as *const [u8; 3]) }, [0x48, 0x8d, 0x84], "the lea");
    let p = {
        let _forced = Forced::new();
        register(Kprobe::addr(at).pre(move |_| {
            handler();
            PreAction::Continue
        }))
        .unwrap()
    };
    assert_eq!(p.optimized(), Ok(()), "a jump");
    p
}

/// The AVX stubs forced while it lives, for one registration at a time (the other test's must
/// not end it). Any other test of the crate that registers a jump-optimized probe while one
/// lives would get an AVX stub too (both keep what these tests' fixtures use).
struct Forced {
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Forced {
    fn new() -> Self {
        static FORCING: Mutex<()> = Mutex::new(());
        let guard = FORCING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        AVX_STUB_FORCED.store(true, Relaxed);
        Forced { _one_at_a_time: guard }
    }
}

impl Drop for Forced {
    fn drop(&mut self) {
        AVX_STUB_FORCED.store(false, Relaxed);
    }
}

/// Eight zeros pushed on the x87 stack and popped, then every `ymm` upper half zeroed.
fn fill_the_x87_stack_and_zero_the_upper_halves() {
    fill_the_x87_stack();
    // SAFETY: `vzeroupper`: a handler may change the upper halves (caller-saved); no Rust
    // code here keeps values there.
    unsafe { std::arch::asm!("vzeroupper") };
}

/// 1.0 pushed three times and left there, as a bad library call might.
fn leave_values_on_the_x87_stack() {
    // SAFETY: three pushes on the x87 stack, left; no Rust code uses x87.
    unsafe { std::arch::asm!("fld1", "fld1", "fld1") };
}

/// Runs `f(a, 2)` for `a` in 1..=`times` on a thread of its own, its x87 first put back
/// unused (it starts with this thread's), then taking a program's signal there if
/// `signalled` (its frame marks x87 in use, initial): the results, and whether x87 was in use
/// before the calls and after them.
fn on_a_fresh_thread(f: unsafe extern "C" fn(u64, u64) -> u64, times: u64, signalled: bool) -> (Vec<u64>, bool, bool) {
    std::thread::spawn(move || {
        put_x87_back_unused();
        if signalled {
            take_a_signal();
        }
        let before = x87_in_use() == Some(true);
        // SAFETY: the fixtures use registers, their stack and the red zone, and leave x87
        // and the upper halves as they found them.
        let results = (1..=times).map(|a| unsafe { f(a, 2) }).collect();
        (results, before, x87_in_use() == Some(true))
    })
    .join()
    .unwrap()
}

#[test]
fn x87_and_a_ymm_upper_half_live_across_the_probe_survive_the_avx_stub() {
    if !avx() {
        return;
    }
    // vmovq (5 bytes), vinsertf128 (6), fld1 (2).
    let p = probe(fxa_value, 13, fill_the_x87_stack_and_zero_the_upper_halves);
    for signalled in [false, true] {
        let (results, _, _) = on_a_fresh_thread(fxa_value, 1000, signalled);
        let wrong = results.iter().zip(1..).find(|&(&r, a)| r != 1.0f64.to_bits() + a);
        assert_eq!(wrong, None, "1.0's bits + a expected");
    }
    assert_eq!(p.hits(), 2000);
}

#[test]
fn x87_in_its_initial_state_comes_back_initial_and_unused_from_the_avx_stub() {
    if !avx() {
        return;
    }
    for handler in [fill_the_x87_stack_and_zero_the_upper_halves, leave_values_on_the_x87_stack, || {}] {
        let p = probe(fx87_initial, 4, handler);
        for signalled in [false, true] {
            let (results, before, after) = on_a_fresh_thread(fx87_initial, 1000, signalled);
            assert_eq!(results.iter().find(|&&r| r != 0), None, "x87 after the probe differs from the initial state");
            // A signal's frame leaves x87 in use on Intel's processors, not on AMD's: there,
            // the signalled case is the other one.
            if x87::signal_frames_mark_x87_in_use() {
                assert_eq!(before, signalled, "x87 in use before the calls");
            }
            assert!(!before || signalled, "x87 in use before the calls, with no signal taken");
            assert!(!after, "x87 left in use");
        }
        assert_eq!(p.hits(), 2000);
    }
}

#[test]
fn a_m256_argument_a_kept_ymm_register_and_mxcsr_survive_the_avx_argument_stub() {
    if !avx() {
        return;
    }
    let at = Addr(fxa_m256_leaf as *const () as u64);
    let p = {
        let _forced = Forced::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_ne!(stubs(VectorState::Xmm).0, avx512_entry_stub(), "the AVX argument stub, not the AVX-512 one");
        }
        register(Kprobe::addr(at).pre(|_| {
            // What a handler's library calls may do: every upper half zeroed, ymm0's filled
            // with ones, MXCSR's precision flag raised by an inexact division.
            // SAFETY: AVX is present; ymm0 is caller-saved and no Rust code here keeps
            // values in the upper halves.
            unsafe {
                std::arch::asm!("vzeroupper", "vxorps ymm0, ymm0, ymm0", "vcmpps ymm0, ymm0, ymm0, 0", out("ymm0") _)
            };
            std::hint::black_box(std::hint::black_box(1.0f64) / std::hint::black_box(3.0f64));
            PreAction::Continue
        }))
        .unwrap()
    };
    assert_eq!(p.optimized(), Ok(()), "a jump");
    // Upper halves in use (the stub stores them), then all zero (it stores nothing).
    for b in [2, 0] {
        let wrong = std::thread::spawn(move || {
            let expected = |a: u64| 0x1f80 << 40 | (a + if b == 0 { 0 } else { a } + b);
            // SAFETY: the fixture uses registers and its stack, and leaves the upper halves
            // zero and MXCSR at reset.
            let call = |a| unsafe { fxa_m256_call(a, b) };
            (1..=2000).map(|a| (a, call(a))).find(|&(a, r)| r != expected(a))
        })
        .join()
        .unwrap();
        assert_eq!(
            wrong.map(|(a, r)| (a, format!("{r:#x}"))),
            None,
            "MXCSR 0x1f80 << 40 | ymm0's two halves + b expected"
        );
    }
    assert_eq!(p.hits(), 4000);
}
