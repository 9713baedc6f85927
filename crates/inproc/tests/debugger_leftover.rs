//! A debugger's breakpoint set on a probe's `int3` (it reads the `int3` as the instruction's
//! first byte, and saves it), the probe removed (dprobe writes the original byte over both),
//! then the debugger's saved `int3` written back as it removes its breakpoint: the program's
//! next pass there must run the original instruction, not die of an unhandled `SIGTRAP`.
//! (`/proc/self/mem` stands in for the debugger, as gdb writes through ptrace or it.)
mod fixtures;
use fixtures::{addr, code};

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Addr, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    ".p2align 12",
    ".globl fxl_entry",
    ".type fxl_entry,@function",
    "fxl_entry:",
    "lea rax, [rdi + rsi + 0x100]",
    "ret",
    ".size fxl_entry, . - fxl_entry",
    ".p2align 4",
    ".globl fxl_ret",
    ".type fxl_ret,@function",
    "fxl_ret:",
    "lea rax, [rdi + rsi + 0x200]",
    "ret",
    ".size fxl_ret, . - fxl_ret",
    ".p2align 4",
    ".globl fxl_changed",
    ".type fxl_changed,@function",
    "fxl_changed:",
    "lea rax, [rdi + rsi + 0x300]",
    "ret",
    ".size fxl_changed, . - fxl_changed",
    ".p2align 12",
);

extern "C" {
    fn fxl_entry(a: u64, b: u64) -> u64;
    fn fxl_ret(a: u64, b: u64) -> u64;
    fn fxl_changed(a: u64, b: u64) -> u64;
}

fn poke(at: Addr, bytes: &[u8]) {
    let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem").unwrap();
    mem.write_all_at(bytes, at.0).unwrap();
}

/// A probe on `int3` at `at`, a debugger's breakpoint over it, the probe removed, the
/// debugger's saved byte (the `int3`) written back: what `at` holds then.
fn leftover_at(at: Addr) -> Vec<u8> {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let original = code(at, 8);
    let p = register(
        Kprobe::addr(at)
            .pre(|_| {
                HITS.fetch_add(1, Relaxed);
                PreAction::Continue
            })
            .no_optimize(),
    )
    .unwrap();
    let saved_by_debugger = code(at, 1);
    assert_eq!(saved_by_debugger, [0xcc], "the debugger reads the probe's int3");
    drop(p);
    assert_eq!(code(at, 8), original, "the probe removed");
    poke(at, &saved_by_debugger);
    code(at, 8)
}

/// In a child, call `f(1, 2)`: its wait status, and what it returned (exit code: the result's
/// low byte).
fn call_in_child(f: unsafe extern "C" fn(u64, u64) -> u64) -> libc::c_int {
    // SAFETY: the child calls the fixture and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: a plain function of two integers, then the child ends.
        unsafe { libc::_exit((f(1, 2) & 0xff) as i32) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn a_debuggers_leftover_int3_over_a_removed_probe_is_put_right() {
    for (f, at, want) in [
        (fxl_entry as unsafe extern "C" fn(u64, u64) -> u64, addr(fxl_entry), 0x103),
        // On the `ret` after the 8-byte `lea`, as on a return probe's exit.
        (fxl_ret, addr(fxl_ret).offset(8), 0x203),
    ] {
        let original = code(at, 8);
        let left = leftover_at(at);
        assert_eq!(left[0], 0xcc, "the debugger's leftover");
        let status = call_in_child(f);
        assert!(libc::WIFEXITED(status), "killed by signal {}", libc::WTERMSIG(status));
        assert_eq!(libc::WEXITSTATUS(status), want & 0xff);
        // In this process too: the byte is the original again, and stays so.
        let before = dprobe_inproc::leftovers_put_right();
        // SAFETY: a plain function of two integers.
        assert_eq!(unsafe { f(1, 2) }, want as u64);
        assert_eq!(code(at, 8), original, "the original code back");
        assert_eq!(dprobe_inproc::leftovers_put_right(), before + 1);
        // SAFETY: as above.
        assert_eq!(unsafe { f(3, 4) }, want as u64 + 4);
    }
}

#[test]
fn an_int3_where_the_rest_of_the_instruction_changed_is_not_taken_for_a_leftover() {
    let at = addr(fxl_changed);
    leftover_at(at);
    // The code there changed since (another tool's patch of the `lea`'s displacement): the
    // `int3` is not dprobe's to take away; unhandled, it ends the program as without dprobe.
    poke(at.offset(4), &[0x04]);
    let status = call_in_child(fxl_changed);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTRAP, "status {status:#x}");
    assert_eq!(code(at, 1), [0xcc], "left as it is");
}
