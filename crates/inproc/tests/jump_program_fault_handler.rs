//! A program that installs its own `SIGSEGV` handler after dprobe's, then makes the page under
//! a live jump read-only again: dprobe's writes into the pages it holds writable are plain
//! stores only while its own fault handler would catch a fault there, so here they go through
//! the system calls, which cannot fault, and the program's handler never sees dprobe's work.
//! (A test binary of its own: the handler replaced is the process's.)
mod fixtures;
use fixtures::{addr, call2, code, perms};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    ".p2align 12",
    ".globl fxh_target",
    ".type fxh_target,@function",
    "fxh_target:",
    "lea rax, [rdi + rsi + 0x9000]",
    "ret",
    ".size fxh_target, . - fxh_target",
    ".p2align 12",
);

extern "C" {
    fn fxh_target(a: u64, b: u64) -> u64;
}

static PROGRAM_FAULTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A fault the program did not expect: count it and end the test process loudly.
    PROGRAM_FAULTS.fetch_add(1, Relaxed);
    // SAFETY: async-signal-safe exit.
    unsafe { libc::_exit(99) };
}

#[test]
fn a_program_fault_handler_installed_after_dprobe_never_sees_its_writes() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxh_target);
    let original = code(at, 8);
    let p = register(Kprobe::addr(at).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(perms(at), "rwxp");
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a plain SA_SIGINFO handler, installed with the C library's sigaction.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = program_handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
        }
    }
    let page = (at.0 & !4095) as *mut libc::c_void;
    // SAFETY: the fixture's page, which holds nothing else; it stays readable and executable.
    assert_eq!(unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) }, 0);
    assert_eq!(call2(fxh_target, 1, 2), 0x9003);
    drop(p);
    assert_eq!(code(at, 8), original, "the jump is gone, byte for byte");
    assert_eq!(call2(fxh_target, 3, 4), 0x9007);
    assert_eq!((HITS.load(Relaxed), PROGRAM_FAULTS.load(Relaxed)), (1, 0));
}
