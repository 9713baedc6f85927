//! The AVX whole-state stub (`avx_state_call` in `jump_stub.rs`, chosen where the kernel
//! enabled x87, SSE and AVX alone) run on a CPU with more, where it is never chosen: x87
//! kept where in use, put back initial and unused where it was initial, with the `ymm`
//! upper halves live. The handlers here touch neither the mask registers nor `zmm16`-
//! `zmm31`, which this stub does not keep.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};

use crate::jump_stub::AVX_STUB_FORCED;
#[path = "../tests/fixtures/x87.rs"]
mod x87;
use crate::{register, Addr, Kprobe, PreAction, Probe};
use x87::{fill_the_x87_stack, fx87_initial, take_a_signal, x87_in_use};

std::arch::global_asm!(
    ".text",
    // `a` in ymm5's upper half and 1.0 on the x87 stack across the probed `lea`: returns
    // 1.0's bits + `a`.
    ".globl fxa_value",
    ".type fxa_value,@function",
    "fxa_value:",
    "vmovq xmm6, rdi",
    "vinserti128 ymm5, ymm5, xmm6, 1",
    "fld1",
    "lea rax, [rdi + rsi + 0x1000]",
    "fstp qword ptr [rsp - 8]",
    "mov rax, [rsp - 8]",
    "vextracti128 xmm6, ymm5, 1",
    "vmovq rcx, xmm6",
    "add rax, rcx",
    "vzeroupper",
    "ret",
    ".size fxa_value, . - fxa_value",
);

extern "C" {
    fn fxa_value(a: u64, b: u64) -> u64;
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

/// The AVX stub forced while it lives, for one registration at a time (the other test's must
/// not end it). Any other test of the crate that registers a probe inside a function while
/// one lives would get the AVX stub too: none does.
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

/// Runs `f(a, 2)` for `a` in 1..=`times` on a thread of its own, first taking a program's
/// signal there if `signalled` (its frame marks x87 in use, initial): the results, and
/// whether x87 was in use before the calls and after them.
fn on_a_fresh_thread(f: unsafe extern "C" fn(u64, u64) -> u64, times: u64, signalled: bool) -> (Vec<u64>, bool, bool) {
    std::thread::spawn(move || {
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
    // vmovq (5 bytes), vinserti128 (6), fld1 (2).
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
        let p = probe(fx87_initial, 1, handler);
        for signalled in [false, true] {
            let (results, before, after) = on_a_fresh_thread(fx87_initial, 1000, signalled);
            assert_eq!(results.iter().find(|&&r| r != 0), None, "x87 after the probe differs from the initial state");
            assert_eq!(before, signalled, "x87 in use before the calls");
            assert!(!after, "x87 left in use");
        }
        assert_eq!(p.hits(), 2000);
    }
}
