//! Whether a place a little past a function's entry still has the entry's vector state: then
//! a detour there keeps what an entry's keeps (`xmm0`-`xmm15`, the vector arguments whole,
//! `MXCSR`), not everything `XSAVE` saves, which costs a hit about twice as much
//! ([`crate::VectorState`]).
//!
//! That holds where every way to the place runs the instructions from the entry (past an
//! `endbr64`) in order, and none of them touches a register beyond the general ones: the
//! C library's `syscall` moves its arguments into the kernel's registers before the load of
//! its sixth, where dprobe's agent probes it. The instructions are checked here; that no
//! branch lands between the entry and the place is the caller's to check, in the function
//! ([`crate::FunctionCode::has_entry_state_at`]) and from the rest of its object.

use iced_x86::{CpuidFeature, EncodingKind, FlowControl, InstructionInfoFactory, Register};

use crate::Addr;

/// The instruction sets whose instructions touch the general registers alone (with the
/// flags and memory); any other (x87, MMX, SSE, AVX, their state instructions) may touch the
/// vector state.
const INTEGER_ONLY: [CpuidFeature; 16] = [
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL8086_ONLY,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL286_ONLY,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL386_ONLY,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::ADX,
    CpuidFeature::CET_IBT,
    CpuidFeature::CMOV,
    CpuidFeature::LZCNT,
    CpuidFeature::MOVBE,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::POPCNT,
];

/// Whether the instructions from `entry` up to `addr` (both in `code`, which starts at
/// `start`) run one after the other into `addr`, each a legacy-encoded instruction of the
/// integer instruction sets that uses no register but the general and segment ones.
pub(crate) fn straight_from_entry(code: &[u8], start: Addr, entry: Addr, addr: Addr) -> bool {
    let Some(mut decoder) = crate::straight_to_exit::decoder_between(code, start, entry, addr) else { return false };
    let mut info = InstructionInfoFactory::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        let general = |r: Register| r.is_gpr() || r.is_segment_register() || r == Register::RIP;
        let integer = i.cpuid_features().iter().all(|f| INTEGER_ONLY.contains(f));
        if i.is_invalid()
            || i.flow_control() != FlowControl::Next
            || i.encoding() != EncodingKind::Legacy
            || !integer
            || !info.info(&i).used_registers().iter().all(|u| general(u.register()))
        {
            return false;
        }
    }
    // The last instruction ends at `addr` exactly (one cut there decodes as invalid).
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's `syscall` (x86-64 `syscall.S`): six moves, the load of the sixth argument, the
    /// system call.
    const SYSCALL: [u8; 25] = [
        0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6, 0x48, 0x89, 0xca, 0x4d, 0x89, 0xc2, 0x4d, 0x89, 0xc8,
        0x4c, 0x8b, 0x4c, 0x24, 0x08, 0x0f, 0x05,
    ];

    #[test]
    fn moves_of_general_registers_keep_the_entrys_state() {
        let start = Addr(0x1000);
        assert!(straight_from_entry(&SYSCALL, start, start, Addr(0x1012)), "past the six moves");
        assert!(straight_from_entry(&SYSCALL, start, start, start), "the entry itself");
        assert!(straight_from_entry(&SYSCALL, start, start, Addr(0x1017)), "a load from the stack too");
        assert!(!straight_from_entry(&SYSCALL, start, start, Addr(0x1019)), "not past the system call");
        assert!(!straight_from_entry(&SYSCALL, start, start, Addr(0x1013)), "inside an instruction");
        assert!(!straight_from_entry(&SYSCALL, start, Addr(0x1003), start), "backwards");
    }

    #[test]
    fn a_vector_or_x87_instruction_or_a_branch_before_the_place_does_not() {
        let start = Addr(0x1000);
        let cases: [(&str, &[u8]); 6] = [
            ("pxor %xmm0,%xmm0", &[0x66, 0x0f, 0xef, 0xc0]),
            ("vzeroupper", &[0xc5, 0xf8, 0x77]),
            ("stmxcsr (%rsp)", &[0x0f, 0xae, 0x1c, 0x24]),
            ("fnstcw (%rsp)", &[0xd9, 0x3c, 0x24]),
            ("je +0", &[0x74, 0x00]),
            ("call +0", &[0xe8, 0, 0, 0, 0]),
        ];
        for (what, first) in cases {
            let mut code = first.to_vec();
            code.extend_from_slice(&[0x48, 0x89, 0xf8]);
            let at = start.offset(code.len() as u64);
            assert!(!straight_from_entry(&code, start, start, at), "{what}");
        }
    }

    #[test]
    fn a_branch_of_the_function_landing_between_the_entry_and_the_place_rules_it_out() {
        let start = Addr(0x1000);
        // mov %rdi,%rax; mov %rsi,%rdi; mov %rdx,%rsi; then a `ret`, or a `jmp` back to +3.
        let moves = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6];
        let returns = crate::FunctionCode::decode([&moves[..], &[0xc3]].concat(), start);
        assert!(returns.has_entry_state_at(Addr(0x1006)));
        let loops = crate::FunctionCode::decode([&moves[..], &[0xeb, 0xf8]].concat(), start);
        assert!(!loops.has_entry_state_at(Addr(0x1006)), "reached from +9 too");
        assert!(!loops.has_entry_state_at(Addr(0x1003)), "the branch lands on it");
        // With `endbr64` first, its own instruction is the entry.
        let cet = crate::FunctionCode::decode([&[0xf3, 0x0f, 0x1e, 0xfa][..], &moves[..], &[0xc3]].concat(), start);
        assert!(cet.has_entry_state_at(Addr(0x100a)));
    }
}
