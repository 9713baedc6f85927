//! The register file a handler sees and may change.

/// General-purpose registers, in hardware encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Gpr {
    /// All sixteen, in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register's hardware number (0 = rax ... 15 = r15).
    pub fn number(self) -> usize {
        self as usize
    }

    pub(crate) fn from_iced(reg: iced_x86::Register) -> Option<Gpr> {
        use iced_x86::Register as R;
        let full = reg.full_register();
        Some(match full {
            R::RAX => Gpr::Rax,
            R::RCX => Gpr::Rcx,
            R::RDX => Gpr::Rdx,
            R::RBX => Gpr::Rbx,
            R::RSP => Gpr::Rsp,
            R::RBP => Gpr::Rbp,
            R::RSI => Gpr::Rsi,
            R::RDI => Gpr::Rdi,
            R::R8 => Gpr::R8,
            R::R9 => Gpr::R9,
            R::R10 => Gpr::R10,
            R::R11 => Gpr::R11,
            R::R12 => Gpr::R12,
            R::R13 => Gpr::R13,
            R::R14 => Gpr::R14,
            R::R15 => Gpr::R15,
            _ => return None,
        })
    }

    pub(crate) fn to_iced(self) -> iced_x86::Register {
        use iced_x86::Register as R;
        [
            R::RAX,
            R::RCX,
            R::RDX,
            R::RBX,
            R::RSP,
            R::RBP,
            R::RSI,
            R::RDI,
            R::R8,
            R::R9,
            R::R10,
            R::R11,
            R::R12,
            R::R13,
            R::R14,
            R::R15,
        ][self as usize]
    }
}

/// The registers of a thread stopped at a probe: what handlers read and write.
///
/// Changes a handler makes are what the program sees when it continues (kprobe rule 5).
///
/// The layout is fixed (`repr(C)`, offsets below), so that an engine's assembly can store the
/// registers straight into one and hand it to handlers without a copy: the general registers
/// in encoding order from offset 0, `rip` at 128, `rflags` at 136, the `xmm` registers from
/// 144, 16-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[allow(missing_docs)]
pub struct Regs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// The instruction pointer. In a pre-handler it is the probed address.
    pub rip: u64,
    pub rflags: u64,
    /// `xmm0`..`xmm15` (the low 128 bits of the vector registers).
    pub xmm: [u128; 16],
}

const _: () = {
    assert!(std::mem::offset_of!(Regs, rsp) == 32);
    assert!(std::mem::offset_of!(Regs, r15) == 120);
    assert!(std::mem::offset_of!(Regs, rip) == 128);
    assert!(std::mem::offset_of!(Regs, rflags) == 136);
    assert!(std::mem::offset_of!(Regs, xmm) == 144);
    assert!(std::mem::size_of::<Regs>() == 400);
    assert!(std::mem::align_of::<Regs>() == 16);
};

impl Regs {
    /// Read a general-purpose register.
    pub fn get(&self, reg: Gpr) -> u64 {
        match reg {
            Gpr::Rax => self.rax,
            Gpr::Rcx => self.rcx,
            Gpr::Rdx => self.rdx,
            Gpr::Rbx => self.rbx,
            Gpr::Rsp => self.rsp,
            Gpr::Rbp => self.rbp,
            Gpr::Rsi => self.rsi,
            Gpr::Rdi => self.rdi,
            Gpr::R8 => self.r8,
            Gpr::R9 => self.r9,
            Gpr::R10 => self.r10,
            Gpr::R11 => self.r11,
            Gpr::R12 => self.r12,
            Gpr::R13 => self.r13,
            Gpr::R14 => self.r14,
            Gpr::R15 => self.r15,
        }
    }

    /// Write a general-purpose register.
    pub fn set(&mut self, reg: Gpr, value: u64) {
        *self.slot(reg) = value;
    }

    fn slot(&mut self, reg: Gpr) -> &mut u64 {
        match reg {
            Gpr::Rax => &mut self.rax,
            Gpr::Rcx => &mut self.rcx,
            Gpr::Rdx => &mut self.rdx,
            Gpr::Rbx => &mut self.rbx,
            Gpr::Rsp => &mut self.rsp,
            Gpr::Rbp => &mut self.rbp,
            Gpr::Rsi => &mut self.rsi,
            Gpr::Rdi => &mut self.rdi,
            Gpr::R8 => &mut self.r8,
            Gpr::R9 => &mut self.r9,
            Gpr::R10 => &mut self.r10,
            Gpr::R11 => &mut self.r11,
            Gpr::R12 => &mut self.r12,
            Gpr::R13 => &mut self.r13,
            Gpr::R14 => &mut self.r14,
            Gpr::R15 => &mut self.r15,
        }
    }

    /// The *n*-th integer argument of the System V x86-64 calling convention (0-based) that is
    /// passed in a register: rdi, rsi, rdx, rcx, r8, r9. `None` past the sixth.
    pub fn int_arg(&self, n: usize) -> Option<u64> {
        const ARGS: [Gpr; 6] = [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::Rcx, Gpr::R8, Gpr::R9];
        ARGS.get(n).map(|r| self.get(*r))
    }

    /// Set the *n*-th integer register argument (see [`Regs::int_arg`]); returns false past the sixth.
    pub fn set_int_arg(&mut self, n: usize, value: u64) -> bool {
        const ARGS: [Gpr; 6] = [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::Rcx, Gpr::R8, Gpr::R9];
        match ARGS.get(n) {
            Some(r) => {
                self.set(*r, value);
                true
            }
            None => false,
        }
    }

    /// The integer return value (rax).
    pub fn return_value(&self) -> u64 {
        self.rax
    }
}
