//! The signal mask of a hit without a trap put back once the hit's frames are gone.
//!
//! A hit inside a program's handler on its alternate stack runs on a stack of dprobe's with the
//! program's asynchronous signals held (`hit_stack.rs`). After a trap, `rt_sigreturn` puts the
//! mask back: a signal that arrived meanwhile is delivered at the probed instruction, its frame
//! right below the program's. A jump has no such return: put back from the dispatcher, the
//! mask would let the signal in below the stub's frames, still on the program's alternate stack
//! (its registers, with AVX-512 the `zmm` arguments, and the dispatcher's frames: about 1.7 KiB),
//! and the program's two signal frames and that do not fit on a `SIGSTKSZ` stack where the
//! kernel's frame takes 3.4 KiB (an XSAVE area with AVX-512 state): the kernel kills the program.
//!
//! So the dispatcher sends the stub's last `ret` here rather than to the detour's redirect
//! (`jump::resume`), with the signals still held. The words the stub leaves, at the stack
//! pointer `S` it returns with:
//! - `[S]`: where the program goes on (the redirect slot, as the detour's redirect reads it);
//! - `[S - 24]`: the mask to put back (below the stub's flags word, `[S - 16]`, both below the
//!   program's red zone and above the stub's frame: read by nothing once the stub is back).
//!
//! Below `S`, the few registers the system call changes or takes are kept; `rt_sigprocmask`
//! puts the mask back (a held signal is delivered as it returns, its frame below these 96
//! bytes); the registers come back, and `ret 128` goes on as the detour's redirect does (the
//! flags untouched: `mov` and `lea` leave them, and the kernel gives the system call's back).

use dprobe_arch::Addr;

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_release_signals",
    ".hidden __dprobe_release_signals",
    ".type __dprobe_release_signals,@function",
    "__dprobe_release_signals:",
    "lea rsp, [rsp - 96]",
    "mov [rsp], rax",
    "mov [rsp + 8], rcx",
    "mov [rsp + 16], rdx",
    "mov [rsp + 24], rsi",
    "mov [rsp + 32], rdi",
    "mov [rsp + 40], r10",
    "mov [rsp + 48], r11",
    // rt_sigprocmask(SIG_SETMASK, &mask, NULL, 8); the mask at S - 24 = rsp + 72.
    "mov eax, 14",
    "mov edi, 2",
    "lea rsi, [rsp + 72]",
    "mov edx, 0",
    "mov r10d, 8",
    "syscall",
    "mov rax, [rsp]",
    "mov rcx, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "mov rsi, [rsp + 24]",
    "mov rdi, [rsp + 32]",
    "mov r10, [rsp + 40]",
    "mov r11, [rsp + 48]",
    "lea rsp, [rsp + 96]",
    "ret 128",
    ".size __dprobe_release_signals, . - __dprobe_release_signals",
);

extern "C" {
    fn __dprobe_release_signals();
}

/// Where a stub's last `ret` goes to put the signal mask back (see the module's comment).
pub(crate) fn address() -> Addr {
    Addr(__dprobe_release_signals as *const () as u64)
}

/// Below the word the stub returns with, where the mask goes.
pub(crate) const MASK_BELOW: u64 = 24;

// The layout the code above and `jump::resume` agree on: the mask below the flags word the
// stub pops, at `rsp + 72` after the code's `lea`; `ret 128` ends where the detour's redirect
// does; the system call's number and `how`.
const _: () = {
    assert!(MASK_BELOW == 96 - 72 && MASK_BELOW > 16);
    assert!(dprobe_arch::DETOUR_STACK_SKIP == 8 + 128);
    assert!(libc::SYS_rt_sigprocmask == 14 && libc::SIG_SETMASK == 2);
};
