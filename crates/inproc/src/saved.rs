//! The registers the return trampoline (`kretprobe.rs`) saves: it pushes the flags, the
//! general registers and `xmm0`-`xmm15` (handlers see and may change them all; Rust code may
//! use any `xmm` register), calls a Rust dispatcher with the frame, and restores from it. (The
//! jump path's stubs store a `Regs` in place instead: `jump_stub.rs`.)

use dprobe_arch::Regs;

/// Pushes the flags and the general registers, clears the direction flag (the ABI's state at
/// a call), and stores `xmm0`-`xmm15` below them: the layout of [`SavedRegs`].
macro_rules! save_registers {
    () => {
        concat!(
            "pushfq\n push rax\n push rcx\n push rdx\n push rbx\n push rbp\n push rsi\n push rdi\n",
            "push r8\n push r9\n push r10\n push r11\n push r12\n push r13\n push r14\n push r15\n",
            "cld\n",
            "sub rsp, 256\n",
            "movdqu [rsp + 0], xmm0\n movdqu [rsp + 16], xmm1\n movdqu [rsp + 32], xmm2\n",
            "movdqu [rsp + 48], xmm3\n movdqu [rsp + 64], xmm4\n movdqu [rsp + 80], xmm5\n",
            "movdqu [rsp + 96], xmm6\n movdqu [rsp + 112], xmm7\n movdqu [rsp + 128], xmm8\n",
            "movdqu [rsp + 144], xmm9\n movdqu [rsp + 160], xmm10\n movdqu [rsp + 176], xmm11\n",
            "movdqu [rsp + 192], xmm12\n movdqu [rsp + 208], xmm13\n movdqu [rsp + 224], xmm14\n",
            "movdqu [rsp + 240], xmm15\n",
        )
    };
}

/// The reverse of [`save_registers!`], with `rsp` at the start of a [`SavedRegs`].
macro_rules! restore_registers {
    () => {
        concat!(
            "movdqu xmm0, [rsp + 0]\n movdqu xmm1, [rsp + 16]\n movdqu xmm2, [rsp + 32]\n",
            "movdqu xmm3, [rsp + 48]\n movdqu xmm4, [rsp + 64]\n movdqu xmm5, [rsp + 80]\n",
            "movdqu xmm6, [rsp + 96]\n movdqu xmm7, [rsp + 112]\n movdqu xmm8, [rsp + 128]\n",
            "movdqu xmm9, [rsp + 144]\n movdqu xmm10, [rsp + 160]\n movdqu xmm11, [rsp + 176]\n",
            "movdqu xmm12, [rsp + 192]\n movdqu xmm13, [rsp + 208]\n movdqu xmm14, [rsp + 224]\n",
            "movdqu xmm15, [rsp + 240]\n",
            "add rsp, 256\n",
            "pop r15\n pop r14\n pop r13\n pop r12\n pop r11\n pop r10\n pop r9\n pop r8\n",
            "pop rdi\n pop rsi\n pop rbp\n pop rbx\n pop rdx\n pop rcx\n pop rax\n popfq\n",
        )
    };
}

pub(crate) use {restore_registers, save_registers};

/// What [`save_registers!`] pushed, lowest address first. Only 8-byte aligned (the stack
/// pointer is not realigned before the pushes), so the vector registers are pairs of `u64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SavedRegs {
    xmm: [[u64; 2]; 16],
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rbx: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    rflags: u64,
}

/// The bytes [`save_registers!`] pushes.
pub(crate) const SAVED_BYTES: usize = std::mem::size_of::<SavedRegs>();
const _: () = assert!(SAVED_BYTES == 256 + 16 * 8);
const _: () = assert!(std::mem::align_of::<SavedRegs>() == 8);

impl SavedRegs {
    /// The registers as handlers see them, with the RIP and RSP the caller knows.
    pub(crate) fn regs(&self, rip: u64, rsp: u64) -> Regs {
        Regs {
            rax: self.rax,
            rcx: self.rcx,
            rdx: self.rdx,
            rbx: self.rbx,
            rsp,
            rbp: self.rbp,
            rsi: self.rsi,
            rdi: self.rdi,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
            rip,
            rflags: self.rflags,
            xmm: self.xmm.map(|[lo, hi]| u128::from(lo) | u128::from(hi) << 64),
        }
    }

    /// Take what a handler changed: every register but RIP and RSP (which the caller handles),
    /// and of the flags only those in `flags` (the rest stay as saved).
    pub(crate) fn set(&mut self, r: &Regs, flags: u64) {
        (self.rax, self.rcx, self.rdx, self.rbx, self.rbp, self.rsi, self.rdi) =
            (r.rax, r.rcx, r.rdx, r.rbx, r.rbp, r.rsi, r.rdi);
        (self.r8, self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15) =
            (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15);
        self.rflags = (self.rflags & !flags) | (r.rflags & flags);
        self.xmm = r.xmm.map(|x| [x as u64, (x >> 64) as u64]);
    }
}
