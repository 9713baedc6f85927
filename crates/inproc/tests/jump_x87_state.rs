//! x87 across jump-optimized probes inside functions (`x87_kept` and `x87_back` in
//! `jump_stub.rs`): a state the program holds (an MMX value after `emms`, a changed control
//! word) comes back whatever the handler did to x87, and an x87 in its initial state, used or
//! only marked in use by a signal, comes back initial (registers zeroed too) and unused, so
//! the thread's later hits need not keep it.
mod fixtures;
use fixtures::x87::{
    fill_the_x87_stack, fx87_control, fx87_initial, fx87_mmx, fx87_round_up, on_a_fresh_thread, take_a_signal,
};
use fixtures::{addr, code};

use dprobe_inproc::{register, Kprobe, PreAction, Probe};

std::arch::global_asm!(
    ".text",
    // `a` in mm0 across the probed `lea`, between MMX instructions (every x87 register
    // valid): returns mm0's bits, `a`.
    ".globl fxj_mmx_live",
    ".type fxj_mmx_live,@function",
    "fxj_mmx_live:",
    "movq mm0, rdi",
    "lea rax, [rdi + rsi + 0x1000]",
    "movq rax, mm0",
    "emms",
    "ret",
    ".size fxj_mmx_live, . - fxj_mmx_live",
);

extern "C" {
    fn fxj_mmx_live(a: u64, b: u64) -> u64;
}

/// A jump-optimized probe on `f`'s `lea`, `before` bytes in, whose handler runs `handler`.
fn jump_probe(f: unsafe extern "C" fn(u64, u64) -> u64, before: u64, handler: fn()) -> Probe {
    let at = addr(f).offset(before);
    assert_eq!(code(at, 3), [0x48, 0x8d, 0x84], "the lea");
    let p = register(Kprobe::addr(at).pre(move |_| {
        handler();
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((p.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "a jump");
    p
}

/// 1.0 pushed three times and left there, as a bad library call might.
fn leave_values_on_the_x87_stack() {
    // SAFETY: three pushes on the x87 stack, left; no Rust code uses x87.
    unsafe { std::arch::asm!("fld1", "fld1", "fld1") };
}

#[test]
fn an_mmx_register_s_bits_survive_a_handler_that_fills_the_x87_stack() {
    // movq mm0, rdi (4 bytes); emms (2).
    let p = jump_probe(fx87_mmx, 6, fill_the_x87_stack);
    for first in [(|| {}) as fn(), take_a_signal] {
        let (results, _, _) = on_a_fresh_thread(fx87_mmx, 1000, first);
        assert!(results.iter().all(|&r| r == 1), "mm0 came back as {:#x?}", results.iter().find(|&&r| r != 1));
    }
    assert_eq!(p.hits(), 2000);
}

#[test]
fn a_changed_x87_control_word_survives_a_handler_that_resets_x87() {
    let p = jump_probe(fx87_control, 4 + 7 + 4, || {
        // SAFETY: x87 put in its initial state; no Rust code uses x87.
        unsafe { std::arch::asm!("fninit") };
    });
    for first in [(|| {}) as fn(), take_a_signal] {
        let (results, _, _) = on_a_fresh_thread(fx87_control, 1000, first);
        assert!(results.iter().all(|&r| r == 0x7f), "the control word came back as {:#x?}", results.first());
    }
    assert_eq!(p.hits(), 2000);
}

#[test]
fn x87_in_its_initial_state_comes_back_initial_and_unused_whatever_the_handler_did() {
    for handler in [fill_the_x87_stack, leave_values_on_the_x87_stack, || {}] {
        let p = jump_probe(fx87_initial, 4, handler);
        // Unused before, then only marked in use by a signal.
        for (first, marked) in [((|| {}) as fn(), false), (take_a_signal, true)] {
            let (results, before, after) = on_a_fresh_thread(fx87_initial, 1000, first);
            assert!(results.iter().all(|&r| r == 0), "x87 after the probe: {:#x?}", results.iter().find(|&&r| r != 0));
            if let (Some(before), Some(after)) = (before, after) {
                // A signal's frame leaves x87 in use on Intel's processors, not on AMD's:
                // there, this case is the first one.
                if fixtures::x87::signal_frames_mark_x87_in_use() {
                    assert_eq!(before, marked, "x87 in use before the calls");
                }
                assert!(!before || marked, "x87 in use before the calls, with no signal taken");
                assert!(!after, "x87 left in use by the probe's handler");
            }
        }
        assert_eq!(p.hits(), 2000);
    }
}

/// 1 + 1 and 5 / 2 rounded to an integer, computed with x87 as a handler's long double
/// arithmetic would: (2, 2) on a clean x87 (an empty stack, rounding to nearest).
fn x87_arithmetic() -> (i64, i64) {
    let (mut sum, mut rounded) = (0i64, 0i64);
    // SAFETY: pushes and pops of the x87 stack (balanced), stores into the two locals.
    unsafe {
        std::arch::asm!(
            "fld1", "fld1", "faddp st(1), st", "fistp qword ptr [{sum}]",
            "mov qword ptr [{rounded}], 5", "fild qword ptr [{rounded}]",
            "mov qword ptr [{rounded}], 2", "fild qword ptr [{rounded}]",
            "fdivp st(1), st", "fistp qword ptr [{rounded}]",
            sum = in(reg) &raw mut sum, rounded = in(reg) &raw mut rounded,
        )
    };
    (sum, rounded)
}

/// A probe on `f`'s `lea`, `before` bytes in, whose handler checks [`x87_arithmetic`]: right
/// in every handler, and `f(1, 2)` returning `expected(1)` after each of 2,000 hits.
fn clean_for_the_handler(f: unsafe extern "C" fn(u64, u64) -> u64, before: u64, expected: fn(u64) -> u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static WRONG: AtomicU64 = AtomicU64::new(0);
    WRONG.store(0, Relaxed);
    let p = jump_probe(f, before, || {
        if x87_arithmetic() != (2, 2) {
            WRONG.fetch_add(1, Relaxed);
        }
    });
    for first in [(|| {}) as fn(), take_a_signal] {
        let (results, _, _) = on_a_fresh_thread(f, 1000, first);
        let wrong = results.iter().zip(1..).find(|&(&r, _)| r != expected(1));
        assert_eq!(wrong, None, "the program's x87 state after the probe");
    }
    assert_eq!((p.hits(), WRONG.load(Relaxed)), (2000, 0), "hits, and handlers that found x87 unclean");
}

#[test]
fn a_handler_finds_x87_clean_between_the_program_s_mmx_instructions() {
    // movq mm0, rdi (4 bytes).
    clean_for_the_handler(fxj_mmx_live, 4, |a| a);
}

#[test]
fn a_handler_finds_x87_rounding_to_nearest_where_the_program_rounds_up() {
    clean_for_the_handler(fx87_round_up, 4 + 7 + 4, |_| 0xb7f);
}
