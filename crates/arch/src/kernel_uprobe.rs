//! The kernel's own rules for a uprobe on x86-64 (`arch/x86/kernel/uprobes.c`), mirrored so
//! that dprobe refuses, with the reason, before placing what the kernel would refuse. The
//! kernel says `ENOTSUPP` only once a process maps the file (the probe then never fires),
//! and on kernels that turn a probed 5-byte `nop` into a `call`, that call writes below the
//! stack pointer, where a leaf function may keep data (its red zone).
//!
//! Worse than a refusal, the kernel (Linux 6.18, as earlier ones) accepts some VEX- and
//! EVEX-encoded instructions and then mishandles them: it decodes the VEX prefix away and goes
//! on with the opcode byte alone, as if it were a one-byte opcode. `vpcmpeqb` (opcode `0x74`)
//! is then a `je`, `vpor` (`0xeb`) a `jmp`, `kmovw %k1,%k2` (`0x90`) a `nop`: the kernel
//! emulates that jump or `nop` instead of running the instruction, so every process that runs
//! the probed instruction skips it and computes with stale vector registers. `vpsubsb`
//! (`0xe8`) is emulated as a `call` (a return address pushed, the rest of the function run
//! twice) and `vfnmadd132ss` (`0x9d`) as a `popf` (the trap flag left set: the process dies of
//! `SIGTRAP`). glibc's AVX-512 string functions begin with such instructions (`__strchr_evex`
//! and `__memset_evex_unaligned_erms` with `vpbroadcastb`, opcode `0x7a`): a system-wide probe
//! on `strchr` makes every program on an AVX-512 machine find no character, and `printf` print
//! its format unexpanded.

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::Addr;

/// Why the kernel would refuse (or mishandle) a uprobe on an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelUprobeRefusal {
    /// A `lock` prefix, or an `es`/`cs`/`ss`/`ds` segment prefix (`ds` is also CET's
    /// `notrack`).
    Prefix(u8),
    /// An opcode outside the kernel's table of instructions it single-steps. For VEX and
    /// EVEX instructions the kernel looks their opcode byte up in that table of one-byte
    /// opcodes (`vex` is then set).
    Opcode {
        /// The opcode byte.
        opcode: u8,
        /// VEX or EVEX encoded.
        vex: bool,
    },
    /// A VEX- or EVEX-encoded instruction the kernel accepts but then takes for the one-byte
    /// instruction of the same opcode byte: a conditional jump (`0x70`-`0x7f`), `call`
    /// (`0xe8`), `jmp` (`0xe9`, `0xeb`), `nop` (`0x90`) or `popf` (`0x9d`).
    MistakenForOneByte {
        /// The opcode byte.
        opcode: u8,
    },
    /// `mov` to `%ss` or `pop %ss`: the kernel never single-steps what masks interrupts.
    MasksExceptions,
    /// A jump or call with an operand-size prefix (`0x66`), which Intel and AMD execute
    /// differently.
    BranchOperandSize,
    /// A 5-byte `nop` that the kernel turns into a `call`, whose return address lands in the
    /// red zone this function keeps data in.
    NopCallOverRedZone,
}

impl fmt::Display for KernelUprobeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelUprobeRefusal::Prefix(0xf0) => {
                write!(f, "the kernel refuses uprobes on `lock`-prefixed instructions")
            }
            KernelUprobeRefusal::Prefix(p) => {
                write!(f, "the kernel refuses uprobes on instructions with a segment prefix ({p:#04x})")
            }
            KernelUprobeRefusal::Opcode { opcode, vex: true } => write!(
                f,
                "the kernel refuses uprobes on this VEX/EVEX-encoded instruction (it checks its opcode {opcode:#04x} \
                 against its one-byte opcode table)"
            ),
            KernelUprobeRefusal::Opcode { opcode, vex: false } => {
                write!(f, "the kernel refuses uprobes on opcode {opcode:#04x}")
            }
            KernelUprobeRefusal::MistakenForOneByte { opcode } => {
                let (taken_for, harm) = match opcode {
                    0x70..=0x7f => ("a conditional jump and skip it", "go on with stale registers"),
                    0xe8 => ("a call and push a return address instead", "run the rest of the function twice"),
                    0xe9 | 0xeb => ("a jump and skip it", "go on with stale registers"),
                    0x90 => ("a nop and skip it", "go on with stale registers"),
                    _ => ("popf and leave the trap flag set after it", "die of SIGTRAP"),
                };
                write!(
                    f,
                    "the kernel would take this VEX/EVEX-encoded instruction (opcode {opcode:#04x}) for {taken_for}: \
                     every process that runs it would {harm}"
                )
            }
            KernelUprobeRefusal::MasksExceptions => {
                write!(f, "the kernel refuses uprobes on `mov` to %ss and `pop %ss`")
            }
            KernelUprobeRefusal::BranchOperandSize => {
                write!(f, "the kernel refuses uprobes on jumps and calls with an operand-size (0x66) prefix")
            }
            KernelUprobeRefusal::NopCallOverRedZone => write!(
                f,
                "this kernel turns a uprobe on a 5-byte nop into a call, whose return address would overwrite \
                 the data this leaf function keeps below its stack pointer (its red zone); probe another \
                 instruction"
            ),
        }
    }
}

/// The kernel's table of one-byte opcodes it accepts in 64-bit processes (`good_insns_64`),
/// one row of 16 per line.
const GOOD_64: [&str; 16] = [
    "1111110011111101", // 00
    "1111110011111100", // 10
    "1111111011111110", // 20
    "1111111011111110", // 30
    "1111111111111111", // 40
    "1111111111111111", // 50
    "0001111111110000", // 60
    "1111111111111111", // 70
    "1101111111111111", // 80
    "1111111111011111", // 90
    "1111111111111111", // a0
    "1111111111111111", // b0
    "1111111111110000", // c0
    "1111000111111111", // d0
    "1111000011010000", // e0
    "1011011111001111", // f0
];

fn good_64(opcode: u8) -> bool {
    GOOD_64[usize::from(opcode >> 4)].as_bytes()[usize::from(opcode & 15)] == b'1'
}

/// The 5-byte `nop` (`nopl 0x0(%rax,%rax,1)`) the kernel optimizes into a `call`.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Whether the kernel would refuse a uprobe at `addr` in the function whose code is
/// `function` (at `function_start`), and why. `optimizes_nop5`: the kernel turns probed
/// 5-byte nops into calls (Linux 6.18 and later).
pub fn kernel_uprobe_refusal(
    function: &[u8],
    function_start: Addr,
    addr: Addr,
    optimizes_nop5: bool,
) -> Option<KernelUprobeRefusal> {
    let at = usize::try_from(addr.0.checked_sub(function_start.0)?).ok()?;
    let b = function.get(at..)?;
    let mut i = 0;
    let mut operand_size = false;
    while let Some(&p) = b.get(i) {
        match p {
            0x26 | 0x2e | 0x36 | 0x3e | 0xf0 => return Some(KernelUprobeRefusal::Prefix(p)),
            0x66 => operand_size = true,
            0x64 | 0x65 | 0x67 | 0xf2 | 0xf3 => {}
            _ => break,
        }
        i += 1;
    }
    if b.get(i).is_some_and(|r| (0x40..=0x4f).contains(r)) {
        i += 1;
    }
    let first = *b.get(i)?;
    // VEX (c5: two bytes, c4: three) and EVEX (62: four) carry the opcode map themselves:
    // the kernel reads the opcode byte after them.
    let vex_len = match first {
        0xc5 => 2,
        0xc4 => 3,
        0x62 => 4,
        _ => 0,
    };
    if vex_len > 0 {
        let opcode = *b.get(i + vex_len)?;
        if !good_64(opcode) {
            return Some(KernelUprobeRefusal::Opcode { opcode, vex: true });
        }
        // Past the table, the kernel's branch and `nop` emulation and its `popf` fixup look at
        // this byte alone, the VEX prefix forgotten.
        let mistaken = matches!(opcode, 0x70..=0x7f | 0xe8 | 0xe9 | 0xeb | 0x90 | 0x9d);
        return mistaken.then_some(KernelUprobeRefusal::MistakenForOneByte { opcode });
    }
    let modrm_reg = |at: usize| b.get(at).map(|m| (m >> 3) & 7);
    if first == 0x17 || (first == 0x8e && modrm_reg(i + 1) == Some(2)) {
        return Some(KernelUprobeRefusal::MasksExceptions);
    }
    // 0x0f itself is in the table: two- and three-byte opcodes pass this check.
    if !good_64(first) {
        return Some(KernelUprobeRefusal::Opcode { opcode: first, vex: false });
    }
    let branch = matches!(first, 0xe8 | 0xe9 | 0xeb | 0x70..=0x7f)
        || (first == 0x0f && b.get(i + 1).is_some_and(|o| (0x80..=0x8f).contains(o)));
    if branch && operand_size {
        return Some(KernelUprobeRefusal::BranchOperandSize);
    }
    if optimizes_nop5 && b.starts_with(&NOP5) && at > 0 && uses_red_zone(function, function_start) {
        return Some(KernelUprobeRefusal::NopCallOverRedZone);
    }
    None
}

/// Whether the function reads or writes below its stack pointer: `-N(%rsp)`, or `-N(%rbp)`
/// in a function that never moves its stack pointer down (a leaf whose frame pointer is its
/// stack pointer).
fn uses_red_zone(function: &[u8], start: Addr) -> bool {
    let mut decoder = Decoder::with_ip(64, function, start.0, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let (mut below_sp, mut below_bp, mut moves_sp) = (false, false, false);
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if instr.op0_register() == Register::RSP && matches!(instr.mnemonic(), Mnemonic::Sub | Mnemonic::Add) {
            moves_sp = true;
        }
        let memory = (0..instr.op_count()).any(|k| instr.op_kind(k) == OpKind::Memory);
        let negative = (instr.memory_displacement64() as i64) < 0;
        if memory && negative && instr.memory_index() == Register::None {
            below_sp |= instr.memory_base() == Register::RSP;
            below_bp |= instr.memory_base() == Register::RBP;
        }
    }
    below_sp || (below_bp && !moves_sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: &[u8]) -> Option<KernelUprobeRefusal> {
        kernel_uprobe_refusal(code, Addr(0x1000), Addr(0x1000), true)
    }

    #[test]
    fn the_kernels_rules_by_instruction() {
        use KernelUprobeRefusal as R;
        let cases: &[(&str, &[u8], Option<R>)] = &[
            ("push %rbp", &[0x55], None),
            ("mov %rsp,%rbp", &[0x48, 0x89, 0xe5], None),
            ("lock xadd %eax,(%rdi)", &[0xf0, 0x0f, 0xc1, 0x07], Some(R::Prefix(0xf0))),
            ("lock cmpxchg with a REX", &[0xf0, 0x48, 0x0f, 0xb1, 0x17], Some(R::Prefix(0xf0))),
            ("notrack jmp *%rax", &[0x3e, 0xff, 0xe0], Some(R::Prefix(0x3e))),
            ("vmovdqu (%rsi),%ymm0", &[0xc5, 0xfe, 0x6f, 0x06], Some(R::Opcode { opcode: 0x6f, vex: true })),
            ("vpxor %xmm0,%xmm0,%xmm0", &[0xc5, 0xf9, 0xef, 0xc0], Some(R::Opcode { opcode: 0xef, vex: true })),
            ("vmovups (%rsi),%xmm0 (opcode 10: in the table)", &[0xc5, 0xf8, 0x10, 0x06], None),
            ("vpmaddwd %ymm1,%ymm2,%ymm3 (opcode f5: in the table)", &[0xc5, 0xed, 0xf5, 0xd9], None),
            ("vcmpeqps %xmm1,%xmm1,%xmm0 (opcode c2: in the table)", &[0xc5, 0xf0, 0xc2, 0xc1, 0x00], None),
            (
                "vmovdqu64 (%rsi),%zmm0",
                &[0x62, 0xf1, 0xfe, 0x48, 0x6f, 0x06],
                Some(R::Opcode { opcode: 0x6f, vex: true }),
            ),
            (
                "__strchr_evex: vpbroadcastb %esi,%ymm17",
                &[0x62, 0xe2, 0x7d, 0x28, 0x7a, 0xce],
                Some(R::MistakenForOneByte { opcode: 0x7a }),
            ),
            ("vpbroadcastb %xmm0,%ymm0", &[0xc4, 0xe2, 0x7d, 0x78, 0xc0], Some(R::MistakenForOneByte { opcode: 0x78 })),
            ("vpcmpeqb %xmm1,%xmm1,%xmm0", &[0xc5, 0xf1, 0x74, 0xc1], Some(R::MistakenForOneByte { opcode: 0x74 })),
            ("vmovd %xmm0,%eax", &[0xc5, 0xf9, 0x7e, 0xc0], Some(R::MistakenForOneByte { opcode: 0x7e })),
            ("vmovdqu %ymm0,(%rdi)", &[0xc5, 0xfe, 0x7f, 0x07], Some(R::MistakenForOneByte { opcode: 0x7f })),
            ("vpsubsb %xmm1,%xmm1,%xmm0", &[0xc5, 0xf1, 0xe8, 0xc1], Some(R::MistakenForOneByte { opcode: 0xe8 })),
            ("vpsubsw %xmm1,%xmm1,%xmm0", &[0xc5, 0xf1, 0xe9, 0xc1], Some(R::MistakenForOneByte { opcode: 0xe9 })),
            ("vpor %xmm1,%xmm1,%xmm0", &[0xc5, 0xf1, 0xeb, 0xc1], Some(R::MistakenForOneByte { opcode: 0xeb })),
            ("kmovw %k1,%k2", &[0xc5, 0xf8, 0x90, 0xd1], Some(R::MistakenForOneByte { opcode: 0x90 })),
            (
                "vfnmadd132ss %xmm1,%xmm1,%xmm0",
                &[0xc4, 0xe2, 0x71, 0x9d, 0xc1],
                Some(R::MistakenForOneByte { opcode: 0x9d }),
            ),
            ("je rel8 itself", &[0x74, 0x02], None),
            ("nop itself", &[0x90], None),
            ("int3", &[0xcc], Some(R::Opcode { opcode: 0xcc, vex: false })),
            ("hlt", &[0xf4], Some(R::Opcode { opcode: 0xf4, vex: false })),
            ("mov %eax,%ss", &[0x8e, 0xd0], Some(R::MasksExceptions)),
            ("mov %eax,%ds is fine", &[0x8e, 0xd8], None),
            ("call with 0x66", &[0x66, 0xe8, 0, 0, 0, 0], Some(R::BranchOperandSize)),
            ("jne with 0x66", &[0x66, 0x0f, 0x85, 0, 0, 0, 0], Some(R::BranchOperandSize)),
            ("syscall (0f: in the table)", &[0x0f, 0x05], None),
            ("rep movsb", &[0xf3, 0xa4], None),
        ];
        for (what, code, expected) in cases {
            assert_eq!(refusal(code), *expected, "{what}");
        }
    }

    #[test]
    fn a_nop5_in_a_function_using_its_red_zone_is_refused_where_the_kernel_makes_it_a_call() {
        // mov %edi,-0x4(%rsp); nopl 0x0(%rax,%rax,1); mov -0x4(%rsp),%eax; ret
        let leaf = [0x89, 0x7c, 0x24, 0xfc, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x8b, 0x44, 0x24, 0xfc, 0xc3];
        let nop = Addr(0x1004);
        assert_eq!(
            kernel_uprobe_refusal(&leaf, Addr(0x1000), nop, true),
            Some(KernelUprobeRefusal::NopCallOverRedZone)
        );
        assert_eq!(kernel_uprobe_refusal(&leaf, Addr(0x1000), nop, false), None, "kernels that single-step it");
        // sub $0x18,%rsp; mov %edi,0xc(%rsp); nopl ...; add $0x18,%rsp; ret: no red zone.
        let framed = [
            0x48, 0x83, 0xec, 0x18, 0x89, 0x7c, 0x24, 0x0c, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x83, 0xc4, 0x18, 0xc3,
        ];
        assert_eq!(kernel_uprobe_refusal(&framed, Addr(0x1000), Addr(0x1008), true), None);
        // push %rbp; mov %rsp,%rbp; mov %edi,-0x14(%rbp); nopl ...; pop %rbp; ret (-O0 leaf).
        let o0 = [0x55, 0x48, 0x89, 0xe5, 0x89, 0x7d, 0xec, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x5d, 0xc3];
        assert_eq!(
            kernel_uprobe_refusal(&o0, Addr(0x1000), Addr(0x1007), true),
            Some(KernelUprobeRefusal::NopCallOverRedZone)
        );
        // At the entry the red zone holds nothing yet.
        let entry = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0x89, 0x7c, 0x24, 0xfc, 0xc3];
        assert_eq!(kernel_uprobe_refusal(&entry, Addr(0x1000), Addr(0x1000), true), None);
    }
}
