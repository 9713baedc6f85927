//! Several probes in one function, placed in one batch: the batch reads and decodes the
//! function once for all of them, and each probe still gets its own answer (a jump for one,
//! the reason it stays on int3 for the other), and one probe that cannot be placed refuses
//! the whole batch with nothing patched.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::{list, register_all, unregister_all, Addr, Kprobe, NotOptimized, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Both tests probe the same function: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

std::arch::global_asm!(
    ".text",
    // f(a, b) = (a == 0 ? 0 : a + 1) + b. The `jz` lands inside the window a jump at the
    // `lea` (+11) would replace, not inside the entry's.
    ".globl fxb_branchy",
    ".type fxb_branchy,@function",
    "fxb_branchy:",
    "push rbp",
    "mov rbp, rsp",
    "xor eax, eax",
    "test rdi, rdi",
    "jz 2f",
    "lea rax, [rdi + 1]",
    "2:",
    "add rax, rsi",
    "pop rbp",
    "ret",
    ".size fxb_branchy, . - fxb_branchy",
);

extern "C" {
    fn fxb_branchy(a: u64, b: u64) -> u64;
}

/// The function's length.
const LEN: usize = 20;
/// Where the `lea` is, and the `jz` that jumps past it.
const LEA: u64 = 11;
const JZ: u64 = 9;

fn counting(at: Addr, hits: &'static AtomicU64) -> Kprobe {
    Kprobe::addr(at).pre(move |_| {
        hits.fetch_add(1, Relaxed);
        PreAction::Continue
    })
}

fn probes_inside(f: Addr) -> usize {
    list().iter().filter(|p| p.addr >= f && p.addr < f.offset(LEN as u64)).count()
}

#[test]
fn two_probes_in_one_function_in_one_batch_each_get_their_own_jump_decision_and_count_exactly() {
    static ENTRY: AtomicU64 = AtomicU64::new(0);
    static INNER: AtomicU64 = AtomicU64::new(0);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = addr(fxb_branchy);
    assert_eq!(code(f.offset(LEA), 4), [0x48, 0x8d, 0x47, 0x01], "the lea is where the test expects it");
    let original = code(f, LEN);
    let probes = register_all(vec![counting(f, &ENTRY), counting(f.offset(LEA), &INNER)]).expect("the batch");
    assert_eq!(probes[0].optimized(), Ok(()), "the entry's window has no branch into it");
    match probes[1].optimized() {
        Err(NotOptimized::BranchIntoWindow { from, target, .. }) => {
            assert_eq!((from, target), (f.offset(JZ), f.offset(LEA + 4)));
        }
        other => panic!("the lea's window has the jz's target inside: {other:?}"),
    }
    assert_eq!(code(f, 1), [0xe9], "the entry is a jump");
    assert_eq!(code(f.offset(LEA), 1), [0xcc], "the lea stays on int3");

    for a in 0..50u64 {
        let expected = if a == 0 { 0 } else { a + 1 } + 7;
        assert_eq!(call2(fxb_branchy, a, 7), expected);
    }
    assert_eq!((ENTRY.load(Relaxed), INNER.load(Relaxed)), (50, 49), "a == 0 jumps over the lea");
    assert_eq!((probes[0].nmissed(), probes[1].nmissed()), (0, 0));

    unregister_all(probes).expect("unregister");
    assert_eq!(code(f, LEN), original, "every byte restored");
    assert_eq!(call2(fxb_branchy, 3, 4), 8);
}

#[test]
fn one_probe_that_cannot_be_placed_in_a_shared_function_refuses_the_batch_with_nothing_patched() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = addr(fxb_branchy);
    let original = code(f, LEN);
    // The middle of the `lea`, after two probes of the same function that could be placed.
    for bad in [f.offset(LEA + 1), f.offset(JZ + 1)] {
        let batch = vec![counting(f, &HITS), counting(f.offset(LEA), &HITS), counting(bad, &HITS)];
        let refused = register_all(batch).expect_err("an address inside an instruction");
        assert!(refused.to_string().contains(&bad.to_string()), "{refused}");
        assert_eq!(code(f, LEN), original, "a refused batch patches nothing");
        assert_eq!(probes_inside(f), 0, "and leaves no probe behind");
        assert_eq!(call2(fxb_branchy, 5, 1), 7);
    }
    assert_eq!(HITS.load(Relaxed), 0);
}
