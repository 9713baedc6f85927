//! A return probe on a function whose tail call lies within its first five bytes
//! (`xor %esi,%esi; jmp callee`, the C library's `_setjmp`): the entry's jump takes the exit's
//! part, so none of the function's probes traps, and a thread that calls it with every signal
//! blocked (a new thread does, in the C library's thread start) is not killed by a `SIGTRAP`
//! the kernel cannot deliver.
mod fixtures;
use fixtures::{addr, call2, code};

use dprobe_inproc::*;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    // fxe_stub(a, b) = fxe_callee(a, 0) = a + 7.
    ".globl fxe_stub",
    ".type fxe_stub,@function",
    "fxe_stub:",
    "xor esi, esi",
    ".byte 0xe9",
    ".long fxe_callee - . - 4",
    ".size fxe_stub, . - fxe_stub",
    ".globl fxe_callee",
    ".type fxe_callee,@function",
    "fxe_callee:",
    "lea rax, [rdi + rsi + 7]",
    "ret",
    ".size fxe_callee, . - fxe_callee",
);

extern "C" {
    fn fxe_stub(a: u64, b: u64) -> u64;
}

/// Run `f` with every signal blocked by the system call itself, as the C library's thread
/// start does (no `pthread_sigmask`, which a guard could see).
fn with_every_signal_blocked<R>(f: impl FnOnce() -> R) -> R {
    let (all, mut old) = (!0u64, 0u64);
    // SAFETY: rt_sigprocmask with valid 8-byte sets.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all as *const u64, &mut old as *mut u64, 8) };
    let result = f();
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &old as *const u64, std::ptr::null_mut::<u64>(), 8)
    };
    result
}

#[test]
fn a_tail_call_in_the_first_five_bytes_is_watched_by_the_entry_s_jump_even_with_every_signal_blocked() {
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let original = code(addr(fxe_stub), 7);
    let p = register_kretprobe(
        Kretprobe::addr(addr(fxe_stub))
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(|regs, data| {
                RETURNS.fetch_add(1, Relaxed);
                if regs.rax != data.0[0] + 7 {
                    WRONG.fetch_add(1, Relaxed);
                }
            }),
    )
    .unwrap();
    assert_eq!(*p.return_mode(), ReturnMode::Exits { sites: 1 });
    assert_eq!(code(addr(fxe_stub), 1), [0xe9], "the entry is a jump, not an int3 kept by a probe at its tail call");
    const CALLS: u64 = 1000;
    let sum =
        std::thread::spawn(|| with_every_signal_blocked(|| (0..CALLS).map(|i| call2(fxe_stub, i, 99)).sum::<u64>()))
            .join()
            .unwrap();
    assert_eq!(sum, (0..CALLS).map(|i| i + 7).sum::<u64>());
    assert_eq!((RETURNS.load(Relaxed), WRONG.load(Relaxed)), (CALLS, 0));
    assert_eq!((p.stats().hits, p.pending()), (CALLS, 0));
    drop(p);
    assert_eq!(code(addr(fxe_stub), 7), original, "original bytes back");
}
