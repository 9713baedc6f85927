//! A trap leaves x87 as the program had it: a value on its stack and a changed control word
//! survive a probe on `int3`, and an x87 the program never used is left unused (not marked
//! in use by the `sigreturn` of dprobe's trap or safepoint signal, which would make the next
//! jump hit inside a function save it: `x87_frame.rs`).
mod fixtures;
use fixtures::addr;
use fixtures::x87::{fx87_control, fx87_mmx, on_a_fresh_thread, x87_in_use};

use dprobe_inproc::{register, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    // 1.0 on the x87 stack across the probed `lea`: returns its bits.
    ".globl fxx_value",
    ".type fxx_value,@function",
    "fxx_value:",
    "fld1",
    "lea rax, [rdi + rsi + 0x1000]",
    "fstp qword ptr [rsp - 8]",
    "mov rax, [rsp - 8]",
    "ret",
    ".size fxx_value, . - fxx_value",
    // Two instructions under a jump's five bytes: optimizing it signals every running thread
    // (the safepoint).
    ".globl fxx_window",
    ".type fxx_window,@function",
    "fxx_window:",
    "mov rax, rdi",
    "add rax, rsi",
    "ret",
    ".size fxx_window, . - fxx_window",
    // No x87 at all.
    ".globl fxx_none",
    ".type fxx_none,@function",
    "fxx_none:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxx_none, . - fxx_none",
);

extern "C" {
    fn fxx_value(a: u64, b: u64) -> u64;
    fn fxx_none(a: u64, b: u64) -> u64;
    fn fxx_window(a: u64, b: u64) -> u64;
}

/// A probe on `int3` on `f`'s `lea` (`before` bytes in), whose handler does nothing.
fn trap_probe(f: unsafe extern "C" fn(u64, u64) -> u64, before: u64) -> dprobe_inproc::Probe {
    let at = addr(f).offset(before);
    assert_eq!(fixtures::code(at, 3), [0x48, 0x8d, 0x84], "the lea");
    register(Kprobe::addr(at).pre(|_| PreAction::Continue).no_optimize()).unwrap()
}

#[test]
fn a_value_on_the_x87_stack_survives_traps() {
    let p = trap_probe(fxx_value, 2);
    let (results, _, _) = on_a_fresh_thread(fxx_value, 1000, || {});
    assert!(results.iter().all(|&r| r == 1.0f64.to_bits()), "1.0 came back as {:#x?}", results.first());
    assert_eq!(p.hits(), 1000);
}

#[test]
fn a_changed_x87_control_word_survives_traps() {
    let p = trap_probe(fx87_control, 4 + 7 + 4);
    let (results, _, _) = on_a_fresh_thread(fx87_control, 1000, || {});
    assert!(results.iter().all(|&r| r == 0x7f), "the control word came back as {:#x?}", results.first());
    assert_eq!(p.hits(), 1000);
}

#[test]
fn an_mmx_register_s_bits_survive_traps_after_emms() {
    // movq mm0, rdi (4 bytes); emms (2).
    let p = trap_probe(fx87_mmx, 6);
    let (results, _, _) = on_a_fresh_thread(fx87_mmx, 1000, || {});
    assert!(results.iter().all(|&r| r == 1), "mm0 came back as {:#x?}", results.first());
    assert_eq!(p.hits(), 1000);
}

#[test]
fn x87_a_thread_never_used_is_left_unused_by_traps() {
    let p = trap_probe(fxx_none, 0);
    let (results, _, in_use) = on_a_fresh_thread(fxx_none, 100, || {});
    assert!(results.iter().all(|&r| r == 0x1003));
    assert_eq!(p.hits(), 100);
    if let Some(in_use) = in_use {
        assert!(!in_use, "x87 marked in use after the traps");
    }
}

#[test]
fn x87_a_running_thread_never_used_is_left_unused_by_the_safepoint_signal() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static STOP: AtomicBool = AtomicBool::new(false);
    static SPINNING: AtomicBool = AtomicBool::new(false);
    let spinner = std::thread::spawn(|| {
        let before = x87_in_use();
        SPINNING.store(true, SeqCst);
        // Running, not in a system call: the safepoint signals it.
        while !STOP.load(SeqCst) {
            std::hint::spin_loop();
        }
        (before, x87_in_use())
    });
    while !SPINNING.load(SeqCst) {
        std::thread::yield_now();
    }
    let p = register(Kprobe::addr(addr(fxx_window)).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(p.optimized(), Ok(()), "a jump over two instructions");
    STOP.store(true, SeqCst);
    let (before, after) = spinner.join().unwrap();
    // SAFETY: the fixture only adds its arguments.
    assert_eq!(unsafe { fxx_window(1, 2) }, 3);
    if let (Some(before), Some(after)) = (before, after) {
        assert!(!before, "x87 in use on a new thread");
        assert!(!after, "x87 marked in use after the safepoint signal");
    }
}
