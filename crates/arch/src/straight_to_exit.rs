//! Whether a function's first instructions lead straight to one of its exits, touching only
//! registers and unable to fault: then what the exit's probe looks at (the stack pointer, the
//! return address, the way out) is already so at the entry, every call reaches the exit, and
//! the entry's probe can do the exit's part too.
//!
//! It matters where the exit lies within the entry's first five bytes: a probe of its own
//! there would sit inside the entry's jump, and one of the two would stay on `int3`. The C
//! library's `_setjmp` is `xor %esi,%esi; jmp __sigsetjmp`, and a new thread calls it while
//! every signal is still blocked: a trap there kills the process (the kernel cannot deliver
//! a blocked `SIGTRAP`).

use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpKind, Register};

use crate::Addr;

/// Whether the instructions from `entry` up to `exit` (both in `code`, which starts at
/// `code_start`) run one after the other into `exit`: no branch, no memory access, no use of
/// the stack pointer, nothing that can fault on registers alone (a division, a privileged
/// instruction, a system call). True when `exit` is `entry`.
pub fn straight_to_exit(code: &[u8], code_start: Addr, entry: Addr, exit: Addr) -> bool {
    let Some(mut decoder) = decoder_between(code, code_start, entry, exit) else { return false };
    let mut info = InstructionInfoFactory::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        let stack = |r: Register| r.full_register() == Register::RSP;
        let memory = (0..i.op_count()).any(|k| matches!(i.op_kind(k), OpKind::Memory))
            || i.stack_pointer_increment() != 0
            || i.is_string_instruction();
        let may_fault = matches!(i.mnemonic(), Mnemonic::Div | Mnemonic::Idiv | Mnemonic::Syscall | Mnemonic::Sysenter)
            || i.is_privileged();
        if i.is_invalid()
            || may_fault
            || i.flow_control() != FlowControl::Next
            || memory
            || info.info(&i).used_registers().iter().any(|u| stack(u.register()))
            || !info.info(&i).used_memory().is_empty()
        {
            return false;
        }
    }
    // The last instruction ends at `exit` exactly (the decoder stops at the slice's end; an
    // instruction cut there decodes as invalid, refused above).
    true
}

/// A decoder of the instructions from `from` up to `to` in `code` (which starts at
/// `code_start`); `None` where they are not both in it, in that order.
pub(crate) fn decoder_between(code: &[u8], code_start: Addr, from: Addr, to: Addr) -> Option<Decoder<'_>> {
    let (start, end) = (from.0.checked_sub(code_start.0)?, to.0.checked_sub(code_start.0)?);
    if start > end || end > code.len() as u64 {
        return None;
    }
    Some(Decoder::with_ip(64, &code[start as usize..end as usize], from.0, DecoderOptions::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_only_instructions_lead_straight_to_the_exit() {
        // xor %esi,%esi; jmp rel32 (the exit, at +2)
        let code = [0x31, 0xf6, 0xe9, 0, 0, 0, 0];
        assert!(straight_to_exit(&code, Addr(0x1000), Addr(0x1000), Addr(0x1002)));
        assert!(straight_to_exit(&code, Addr(0x1000), Addr(0x1000), Addr(0x1000)), "the exit is the entry");
        // mov $1,%esi; add $1,%rdi
        let code = [0xbe, 1, 0, 0, 0, 0x48, 0x83, 0xc7, 0x01, 0xe9, 0, 0, 0, 0];
        assert!(straight_to_exit(&code, Addr(0x1000), Addr(0x1000), Addr(0x1009)));
    }

    #[test]
    fn the_stack_memory_a_branch_or_a_cut_instruction_is_not_straight() {
        let cases: [(&[u8], &str); 8] = [
            (&[0x55, 0xe9, 0, 0, 0, 0], "push %rbp"),
            (&[0x48, 0x83, 0xec, 0x08, 0xe9, 0, 0, 0, 0], "sub $8,%rsp"),
            (&[0x48, 0x8b, 0x07, 0xe9, 0, 0, 0, 0], "mov (%rdi),%rax"),
            (&[0x48, 0x89, 0xe0, 0xe9, 0, 0, 0, 0], "mov %rsp,%rax"),
            (&[0x74, 0x00, 0xe9, 0, 0, 0, 0], "je"),
            (&[0xa4, 0xe9, 0, 0, 0, 0], "movsb"),
            (&[0xf7, 0xf1, 0xe9, 0, 0, 0, 0], "div %ecx"),
            (&[0xfa, 0xe9, 0, 0, 0, 0], "cli"),
        ];
        for (code, what) in cases {
            let exit = Addr(0x1000 + code.len() as u64 - 5);
            assert!(!straight_to_exit(code, Addr(0x1000), Addr(0x1000), exit), "{what}");
        }
        // The exit in the middle of an instruction: `mov $1,%esi` is 5 bytes.
        let code = [0xbe, 1, 0, 0, 0, 0xe9, 0, 0, 0, 0];
        assert!(!straight_to_exit(&code, Addr(0x1000), Addr(0x1000), Addr(0x1002)));
        // Outside the code, or before the entry.
        assert!(!straight_to_exit(&code, Addr(0x1000), Addr(0x1005), Addr(0x1000)));
        assert!(!straight_to_exit(&code, Addr(0x1000), Addr(0x1000), Addr(0x2000)));
    }
}
