//! A probe whose jump would cover another probe's instruction stays on `int3` while that
//! probe is there, and becomes a jump again once it is gone or disabled.
mod fixtures;
use fixtures::code;

use dprobe_inproc::{register, Addr, Kprobe, NotOptimized, PreAction};

std::arch::global_asm!(
    ".text",
    // Two 3-byte instructions: a jump at the entry covers the second one.
    ".globl fxr_two",
    ".type fxr_two,@function",
    "fxr_two:",
    "mov rax, rdi",
    "add rax, rsi",
    "ret",
    ".size fxr_two, . - fxr_two",
);

extern "C" {
    fn fxr_two(a: u64, b: u64) -> u64;
}

fn call() {
    // SAFETY: adds its arguments.
    assert_eq!(unsafe { fxr_two(std::hint::black_box(40), 2) }, 42);
}

#[test]
fn a_probe_blocked_by_a_probe_in_its_window_is_a_jump_again_once_that_probe_is_disabled_or_gone() {
    let at = Addr(fxr_two as *const () as usize as u64);
    let original = code(at, 7);
    let outer = register(Kprobe::addr(at).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!((outer.optimized(), code(at, 1)), (Ok(()), vec![0xe9]));
    call();

    let inner = register(Kprobe::addr(at.offset(3)).pre(|_| PreAction::Continue)).unwrap();
    let blocked = Err(NotOptimized::ProbeInWindow { other: at.offset(3) });
    assert_eq!((outer.optimized(), code(at, 1)), (blocked.clone(), vec![0xcc]));
    call();
    assert_eq!((outer.hits(), inner.hits()), (2, 1));

    inner.disable().unwrap();
    assert_eq!((outer.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "inner disabled");
    call();
    assert_eq!((outer.hits(), inner.hits()), (3, 1));

    inner.enable().unwrap();
    assert_eq!((outer.optimized(), code(at, 1)), (blocked, vec![0xcc]));
    call();
    assert_eq!((outer.hits(), inner.hits()), (4, 2));

    assert_eq!(inner.unregister().unwrap().hits, 2);
    assert_eq!((outer.optimized(), code(at, 1)), (Ok(()), vec![0xe9]), "inner gone");
    call();
    assert_eq!((outer.hits(), outer.nmissed()), (5, 0));
    drop(outer);
    assert_eq!(code(at, 7), original);
}
