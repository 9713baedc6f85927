//! A return probe watched at the function's exits takes its entry through the jump path, an
//! exit with room for a jump (a 5-byte tail call) is a jump too, and so is the one-byte `ret`,
//! through a jump placed on the instruction before it. Every return is counted, from four
//! threads.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // A 5-byte nop at the entry; `ret` when a is not 0, else a tail call (jmp rel32) to
    // fxk_callee.
    ".globl fxk_two_exits",
    ".type fxk_two_exits,@function",
    "fxk_two_exits:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "test rdi, rdi",
    "jz 1f",
    "lea rax, [rdi + rsi]",
    "ret",
    "1:",
    ".byte 0xe9",
    ".long fxk_callee - . - 4",
    ".size fxk_two_exits, . - fxk_two_exits",
    ".globl fxk_callee",
    ".type fxk_callee,@function",
    "fxk_callee:",
    "lea rax, [rsi + 100]",
    "ret",
    ".size fxk_callee, . - fxk_callee",
);

extern "C" {
    fn fxk_two_exits(a: u64, b: u64) -> u64;
}

#[test]
fn the_entry_a_tail_call_exit_and_the_ret_are_jumps_and_every_return_counts() {
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    let f = addr(fxk_two_exits);
    let original = code(f, 20);
    let (ret, tail) = (f.offset(14), f.offset(15));
    assert_eq!((code(ret, 1), code(tail, 1)), (vec![0xc3], vec![0xe9]));
    let p = register_kretprobe(Kretprobe::addr(f).handler(|_, _| {
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert_eq!(*p.return_mode(), ReturnMode::Exits { sites: 2 });
    let jump = |a: Addr| list().into_iter().find(|i| i.addr == a).map(|i| i.jump).expect("a probe there");
    assert_eq!(jump(f), Ok(()), "the entry is a jump");
    assert_eq!(jump(tail), Ok(()), "the tail call's 5 bytes are a jump");
    assert_eq!(jump(ret), Ok(()), "the ret's jump goes on the lea before it");
    // The lea (+10) and the ret are the window: the jump's last byte covers the ret.
    let lea = f.offset(10);
    assert_eq!((code(f, 1), code(lea, 1), code(tail, 1)), (vec![0xe9], vec![0xe9], vec![0xe9]));
    const CALLS: u64 = 20_000;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                (0..CALLS).all(|i| {
                    let a = (i + t) % 2 * (t + 1);
                    call2(fxk_two_exits, a, i) == if a == 0 { i + 100 } else { a + i }
                })
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()), "a call computed a wrong value");
    let st = p.stats();
    assert_eq!((RETURNS.load(Relaxed), st.returns, st.missed, p.pending()), (4 * CALLS, 4 * CALLS, 0, 0));
    drop(p);
    assert_eq!(code(f, 20), original, "original bytes back");
}
