//! The registers a jump-optimized probe's handler sees and changes: every general register, the
//! flags and the `xmm` registers reach the handler as the program had them, and the handler's
//! changes are what the code after the probe runs with, at a function's entry (the `xmm` stub)
//! and inside a function (on a CPU with AVX, the whole-state stub).
mod fixtures;
use fixtures::{addr, call2};

use dprobe_inproc::{register, Kprobe, PreAction, Regs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".data",
    ".balign 16",
    ".globl fxf_out",
    "fxf_out:",
    ".zero 400",
    ".text",
    // Every register set to a known value, the carry flag set, then the probed 5-byte nop, then
    // every register stored to `fxf_out` in the layout of `Regs` (callee-saved ones kept).
    ".globl fxf_inner",
    ".type fxf_inner,@function",
    "fxf_inner:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov rax, 0x100",
    "mov rcx, 0x101",
    "mov rdx, 0x102",
    "mov rbx, 0x103",
    "mov rbp, 0x105",
    "mov rsi, 0x106",
    "mov rdi, 0x107",
    "mov r8, 0x108",
    "mov r9, 0x109",
    "mov r10, 0x10a",
    "mov r11, 0x10b",
    "mov r12, 0x10c",
    "mov r13, 0x10d",
    "mov r14, 0x10e",
    "mov r15, 0x10f",
    "movq xmm0, rax",
    "movq xmm15, rcx",
    "stc",
    ".globl fxf_inner_probe",
    "fxf_inner_probe:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov [rip + fxf_out + 0], rax",
    "mov [rip + fxf_out + 8], rcx",
    "mov [rip + fxf_out + 16], rdx",
    "mov [rip + fxf_out + 24], rbx",
    "mov [rip + fxf_out + 40], rbp",
    "mov [rip + fxf_out + 48], rsi",
    "mov [rip + fxf_out + 56], rdi",
    "mov [rip + fxf_out + 64], r8",
    "mov [rip + fxf_out + 72], r9",
    "mov [rip + fxf_out + 80], r10",
    "mov [rip + fxf_out + 88], r11",
    "mov [rip + fxf_out + 96], r12",
    "mov [rip + fxf_out + 104], r13",
    "mov [rip + fxf_out + 112], r14",
    "mov [rip + fxf_out + 120], r15",
    "movdqu [rip + fxf_out + 144], xmm0",
    "movdqu [rip + fxf_out + 384], xmm15",
    "pushfq",
    "pop rax",
    "mov [rip + fxf_out + 136], rax",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".size fxf_inner, . - fxf_inner",
    // The probe at the entry: the caller-saved registers as the caller left them.
    // Returns the flags at its entry's probed nop as the code after it sees them (then clears
    // the direction flag a handler may have set).
    ".globl fxf_flags",
    ".type fxf_flags,@function",
    "fxf_flags:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "pushfq",
    "pop rax",
    "cld",
    "ret",
    ".size fxf_flags, . - fxf_flags",
    // Calls it with the flags set to `a`.
    ".globl fxf_flags_call",
    ".type fxf_flags_call,@function",
    "fxf_flags_call:",
    "push rdi",
    "popfq",
    "call fxf_flags",
    "ret",
    ".size fxf_flags_call, . - fxf_flags_call",
    ".globl fxf_entry",
    ".type fxf_entry,@function",
    "fxf_entry:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov [rip + fxf_out + 0], rax",
    "mov [rip + fxf_out + 8], rcx",
    "mov [rip + fxf_out + 16], rdx",
    "mov [rip + fxf_out + 48], rsi",
    "mov [rip + fxf_out + 56], rdi",
    "mov [rip + fxf_out + 64], r8",
    "mov [rip + fxf_out + 72], r9",
    "mov [rip + fxf_out + 80], r10",
    "mov [rip + fxf_out + 88], r11",
    "movdqu [rip + fxf_out + 144], xmm0",
    "movdqu [rip + fxf_out + 384], xmm15",
    "pushfq",
    "pop rax",
    "mov [rip + fxf_out + 136], rax",
    "ret",
    ".size fxf_entry, . - fxf_entry",
);

extern "C" {
    fn fxf_inner(a: u64, b: u64) -> u64;
    fn fxf_inner_probe(a: u64, b: u64) -> u64;
    fn fxf_entry(a: u64, b: u64) -> u64;
    fn fxf_flags();
    fn fxf_flags_call(a: u64, b: u64) -> u64;
    static fxf_out: [u64; 50];
}

fn out() -> [u64; 50] {
    // SAFETY: written only by the fixtures, which the tests call on this thread before reading.
    unsafe { std::ptr::read_volatile(&raw const fxf_out) }
}

const CF: u64 = 1;

/// What a handler saw, and each register changed to a value of its own.
fn see_and_change(regs: &mut Regs, seen: &[AtomicU64; 20]) {
    let gprs = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rbp, regs.rsi, regs.rdi, regs.r8, regs.r9, regs.r10, regs.r11,
        regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    for (slot, v) in seen.iter().zip(gprs) {
        slot.store(v, Relaxed);
    }
    seen[15].store(regs.rflags, Relaxed);
    seen[16].store(regs.xmm[0] as u64, Relaxed);
    seen[17].store(regs.xmm[15] as u64, Relaxed);
    seen[18].store(regs.rip, Relaxed);
    seen[19].store(regs.rsp, Relaxed);
    for r in [
        &mut regs.rax,
        &mut regs.rcx,
        &mut regs.rdx,
        &mut regs.rbx,
        &mut regs.rbp,
        &mut regs.rsi,
        &mut regs.rdi,
        &mut regs.r8,
        &mut regs.r9,
        &mut regs.r10,
        &mut regs.r11,
        &mut regs.r12,
        &mut regs.r13,
        &mut regs.r14,
        &mut regs.r15,
    ] {
        *r += 0x1000;
    }
    regs.rflags ^= CF;
    regs.xmm[0] = 0x2222_0000_0000_0000_0000_0000_0000_0001;
    regs.xmm[15] = 0x3333_0000_0000_0000_0000_0000_0000_0002;
}

#[test]
fn inside_a_function_a_handler_sees_and_changes_every_register() {
    static SEEN: [AtomicU64; 20] = [const { AtomicU64::new(0) }; 20];
    let at = addr(fxf_inner_probe);
    let p = register(Kprobe::addr(at).pre(|regs| {
        see_and_change(regs, &SEEN);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the probe is a jump");
    for round in 0..3 {
        call2(fxf_inner, 0, 0);
        let seen: Vec<u64> = SEEN.iter().map(|s| s.load(Relaxed)).collect();
        let expected_gprs =
            [0x100, 0x101, 0x102, 0x103, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10a, 0x10b, 0x10c, 0x10d, 0x10e, 0x10f];
        assert_eq!(seen[..15], expected_gprs, "round {round}: the general registers as the program had them");
        assert_eq!(seen[15] & CF, CF, "the carry flag the program set");
        assert_eq!((seen[16], seen[17]), (0x100, 0x101), "xmm0 and xmm15");
        assert_eq!(seen[18], at.0, "RIP is the probe address");
        let o = out();
        let after: Vec<u64> = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].iter().map(|&i| o[i]).collect();
        assert_eq!(after, expected_gprs.map(|v| v + 0x1000), "the handler's values, after the probe");
        assert_eq!(o[17] & CF, 0, "the carry flag the handler cleared");
        assert_eq!((o[18], o[19]), (1, 0x2222_0000_0000_0000), "xmm0 as the handler wrote it");
        assert_eq!((o[48], o[49]), (2, 0x3333_0000_0000_0000), "xmm15 as the handler wrote it");
    }
    // At the probe, the function had pushed six registers below its return address.
    let rsp = SEEN[19].load(Relaxed);
    assert_eq!(rsp % 16, 8, "the call left rsp 8 below a 16-byte boundary, six pushes 48 more");
    assert_eq!(p.hits(), 3);
}

#[test]
fn at_a_function_entry_a_handler_sees_and_changes_the_caller_saved_registers() {
    static SEEN: [AtomicU64; 20] = [const { AtomicU64::new(0) }; 20];
    static CHANGE: AtomicBool = AtomicBool::new(true);
    let p = register(Kprobe::addr(addr(fxf_entry)).pre(|regs| {
        let keep = *regs;
        see_and_change(regs, &SEEN);
        // The callee-saved registers are the caller's: put them back.
        (regs.rbx, regs.rbp, regs.r12, regs.r13, regs.r14, regs.r15) =
            (keep.rbx, keep.rbp, keep.r12, keep.r13, keep.r14, keep.r15);
        if !CHANGE.load(Relaxed) {
            *regs = keep;
        }
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the probe is a jump");
    call2(fxf_entry, 0x55, 0x66);
    assert_eq!((SEEN[6].load(Relaxed), SEEN[5].load(Relaxed)), (0x55, 0x66), "rdi and rsi: the arguments");
    assert_eq!(SEEN[18].load(Relaxed), addr(fxf_entry).0);
    assert_eq!(SEEN[19].load(Relaxed) % 16, 8, "rsp at an entry: the return address just pushed");
    let o = out();
    assert_eq!((o[6], o[7]), (0x66 + 0x1000, 0x55 + 0x1000), "rsi and rdi as the handler wrote them");
    assert_eq!(o[0], SEEN[0].load(Relaxed) + 0x1000, "rax");
    assert_eq!(o[11], SEEN[10].load(Relaxed) + 0x1000, "r11");
    assert_eq!((o[18], o[19]), (1, 0x2222_0000_0000_0000), "xmm0 as the handler wrote it");
    assert_eq!(o[17] & CF, (SEEN[15].load(Relaxed) & CF) ^ CF, "the carry flag flipped");
    // A handler that changes nothing: the program's own flags come through.
    CHANGE.store(false, Relaxed);
    call2(fxf_entry, 1, 2);
    let o = out();
    assert_eq!((o[6], o[7]), (2, 1));
    assert_eq!(o[17] & CF, SEEN[15].load(Relaxed) & CF, "the flags as they were");
    assert_eq!(p.hits(), 2);
}

/// The status flags: OF, SF, ZF, AF, PF, CF.
const STATUS: u64 = 0x8d5;
/// The direction flag.
const DF: u64 = 0x400;

#[test]
fn every_status_flag_and_the_direction_flag_reach_the_handler_and_come_back_as_it_left_them() {
    // 0: leave the flags; 1: flip every status flag; 2: flip them and set the direction flag
    // (a flag the stub itself changes, restored another way).
    static MODE: AtomicU64 = AtomicU64::new(0);
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let at = dprobe_inproc::Addr(fxf_flags as *const () as u64);
    let p = register(Kprobe::addr(at).pre(|regs| {
        SEEN.store(regs.rflags, Relaxed);
        match MODE.load(Relaxed) {
            0 => {}
            1 => regs.rflags ^= STATUS,
            _ => regs.rflags = (regs.rflags ^ STATUS) | DF,
        }
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(p.optimized(), Ok(()), "the probe is a jump");
    let mut calls = 0;
    for mode in 0..3 {
        MODE.store(mode, Relaxed);
        // Every combination of the six status flags (bit 1 is always set).
        for bits in 0..64u64 {
            let flags = [1, 4, 0x10, 0x40, 0x80, 0x800].iter().enumerate().fold(2, |f, (k, &b)| match bits >> k & 1 {
                1 => f | b,
                _ => f,
            });
            let back = call2(fxf_flags_call, flags, 0);
            calls += 1;
            let seen = SEEN.load(Relaxed);
            assert_eq!(seen & (STATUS | DF), flags & STATUS, "mode {mode}: the handler sees the program's flags");
            let expected = match mode {
                0 => flags & STATUS,
                1 => (flags ^ STATUS) & STATUS,
                _ => ((flags ^ STATUS) & STATUS) | DF,
            };
            assert_eq!(back & (STATUS | DF), expected, "mode {mode}: the flags after the probe, from {flags:#x}");
        }
    }
    assert_eq!(p.hits(), calls);
}
