//! Sending a call to wait before it enters a function: a probe at the function's entry moves
//! the thread to a stub that keeps the call's arguments, runs a function of dprobe's on the
//! thread outside any hit (where it may wait: a handler that waited would hold up the
//! registrations a safepoint makes, and could be interrupted by nothing), then starts the
//! call again, from the function's entry, where the probe recognises it by a token.
//!
//! `posix_spawn` waits there while code is patched (`spawn_hold.rs`); the agent's id changes
//! wait for its thread to take on the caller's capabilities.

use dprobe_arch::Regs;
use dprobe_core::PreAction;

/// Send the call entering the function at `regs.rip` to run `wait` first (on its thread, its
/// arguments kept), then to enter the function again with what `wait` returned in `r11` and
/// the entry in `r10` ([`reentered`]). The entry probe's pre-handler returns what this does.
/// `wait` runs outside any hit: it may wait, and calls no probed function (`raw_calls`).
///
/// A probe a little past the entry may send the call back the same way, its registers first
/// set back to what they were at the entry, where the instructions before it leave `r11` as
/// it is (`syscall`'s argument moves, where a jump goes in one store).
pub fn wait_then_reenter(regs: &mut Regs, wait: extern "C" fn() -> u64) -> PreAction {
    regs.r11 = regs.rip;
    regs.r10 = wait as usize as u64;
    regs.rip = __dprobe_wait_then_reenter as *const () as u64;
    PreAction::SkipInstruction
}

/// Whether the call at `regs` comes back from [`wait_then_reenter`] with `token` (what its
/// `wait` returned), which is then cleared from `r11`, so that no call made after it finds it.
pub fn reentered(regs: &mut Regs, token: u64) -> bool {
    let back = regs.r11 == token;
    if back {
        regs.r11 = 0;
    }
    back
}

// The stub, entered from a function's entry with `r11` that entry and `r10` the function to
// run: the arguments (`rdi`..`r9`) and `r11` are kept (seven pushes: the stack, 8 past a
// 16-byte boundary at a function's entry, is aligned for the call), the function's result goes
// into `r11` and the entry into `r10` (neither is an argument at a function's entry), and the
// call starts again. `r11` carries the token because the instructions of `syscall` before its
// probe (`wait_then_reenter`'s second paragraph) overwrite `r10`. A jump, not a `ret`: a
// shadow stack would refuse a return that no call made.
std::arch::global_asm!(
    ".text",
    ".globl __dprobe_wait_then_reenter",
    ".hidden __dprobe_wait_then_reenter",
    ".type __dprobe_wait_then_reenter,@function",
    "__dprobe_wait_then_reenter:",
    "push rdi",
    "push rsi",
    "push rdx",
    "push rcx",
    "push r8",
    "push r9",
    "push r11",
    "call r10",
    "pop r11",
    "pop r9",
    "pop r8",
    "pop rcx",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    "mov r10, r11",
    "mov r11, rax",
    "jmp r10",
    ".size __dprobe_wait_then_reenter, . - __dprobe_wait_then_reenter",
);

extern "C" {
    fn __dprobe_wait_then_reenter();
}
