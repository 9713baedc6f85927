//! The registers of a Linux x86-64 signal frame: `uc_mcontext.gregs` (the kernel's
//! `struct sigcontext`, glibc's `REG_*` order) and the `xmm` words of its FPU save area.
//! Written once here for the in-process engine's handlers and the differential test's.

use crate::{Gpr, Regs};

/// How many general registers a frame's `gregs` holds.
pub const FRAME_GREGS: usize = 23;

/// Where each general register is in `gregs` (`REG_R8` = 0 ... `REG_RSP` = 15).
const GREGS: [(Gpr, usize); 16] = [
    (Gpr::R8, 0),
    (Gpr::R9, 1),
    (Gpr::R10, 2),
    (Gpr::R11, 3),
    (Gpr::R12, 4),
    (Gpr::R13, 5),
    (Gpr::R14, 6),
    (Gpr::R15, 7),
    (Gpr::Rdi, 8),
    (Gpr::Rsi, 9),
    (Gpr::Rbp, 10),
    (Gpr::Rbx, 11),
    (Gpr::Rdx, 12),
    (Gpr::Rax, 13),
    (Gpr::Rcx, 14),
    (Gpr::Rsp, 15),
];
/// `REG_RIP`.
const RIP: usize = 16;
/// `REG_EFL`.
const EFL: usize = 17;

/// The flags a handler may change: the arithmetic ones and the direction flag (the kernel
/// restores no other at `sigreturn` anyway).
const USER_FLAGS: u64 = 0x0cd5 | (1 << 10);

// The in-process engine calls these in its signal handlers, which may run on a small
// alternate signal stack: plain loops over a constant table, no copies of `Regs`.
impl Regs {
    /// The registers saved in a signal frame's `gregs` (`xmm` left 0: see
    /// [`Regs::xmm_from_frame`]).
    pub fn from_signal_frame(gregs: &[i64; FRAME_GREGS]) -> Regs {
        let mut regs = Regs { rip: gregs[RIP] as u64, rflags: gregs[EFL] as u64, ..Regs::default() };
        for &(reg, at) in &GREGS {
            regs.set(reg, gregs[at] as u64);
        }
        regs
    }

    /// Write the registers back into a signal frame's `gregs`, for the thread to resume with
    /// at `sigreturn`: every general register, `rip`, and the flags a program may change.
    pub fn to_signal_frame(&self, gregs: &mut [i64; FRAME_GREGS]) {
        for &(reg, at) in &GREGS {
            gregs[at] = self.get(reg) as i64;
        }
        gregs[RIP] = self.rip as i64;
        gregs[EFL] = ((gregs[EFL] as u64 & !USER_FLAGS) | (self.rflags & USER_FLAGS)) as i64;
    }

    /// An `xmm` register from the four little-endian words of a frame's FPU save area.
    pub fn xmm_from_frame(words: [u32; 4]) -> u128 {
        u128::from(words[0]) | u128::from(words[1]) << 32 | u128::from(words[2]) << 64 | u128::from(words[3]) << 96
    }

    /// The four words of `xmm` register `i` as a frame's FPU save area holds them.
    pub fn xmm_frame_words(&self, i: usize) -> [u32; 4] {
        let v = self.xmm[i];
        [v as u32, (v >> 32) as u32, (v >> 64) as u32, (v >> 96) as u32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_read_and_written_back_is_the_same_frame() {
        let gregs: [i64; FRAME_GREGS] = std::array::from_fn(|i| 0x1000 + i as i64);
        let regs = Regs::from_signal_frame(&gregs);
        assert_eq!((regs.r8, regs.rdi, regs.rax, regs.rsp, regs.rip), (0x1000, 0x1008, 0x100d, 0x100f, 0x1010));
        let mut g = [0i64; FRAME_GREGS];
        g[EFL] = gregs[EFL];
        regs.to_signal_frame(&mut g);
        assert_eq!(&g[..=EFL], &gregs[..=EFL]);
    }

    #[test]
    fn xmm_words_are_little_endian() {
        let words = [3, 1, 2, 0xffff_ffff];
        let v = Regs::xmm_from_frame(words);
        assert_eq!(v, 3 | 1 << 32 | 2 << 64 | 0xffff_ffffu128 << 96);
        let mut regs = Regs::default();
        regs.xmm[5] = v;
        assert_eq!(regs.xmm_frame_words(5), words);
    }

    #[test]
    fn only_the_user_flags_are_written() {
        let mut g = [0i64; FRAME_GREGS];
        g[EFL] = 0x202; // IF and the reserved bit
        Regs { rflags: 0x100 | 0x400 | 0x1, ..Regs::default() }.to_signal_frame(&mut g);
        assert_eq!(g[EFL], 0x202 | 0x400 | 0x1, "TF is not the program's to set; DF and CF are");
    }
}
