//! The disassembler's tables, built before they are needed.
//!
//! iced-x86 builds its decoder's and encoder's tables the first time each is used, about
//! 0.7 ms on this kind of machine. A process that has just started (a program the agent was
//! loaded into after its `exec`) pays that at its first probe, on the path that holds the
//! program. [`warm_up`] lets a caller pay it where it would wait anyway.

use iced_x86::{BlockEncoder, BlockEncoderOptions, Decoder, DecoderOptions, InstructionBlock, InstructionInfoFactory};

/// Build the decoder's, the instruction information's and the encoder's tables now: decode
/// two instructions, ask what one uses, and lay both out elsewhere.
pub fn warm_up() {
    // mov %rbx,0x8(%rsp); call .+0
    const CODE: [u8; 10] = [0x48, 0x89, 0x5c, 0x24, 0x08, 0xe8, 0, 0, 0, 0];
    let mut decoder = Decoder::with_ip(64, &CODE, 0x1000, DecoderOptions::NONE);
    let insns = [decoder.decode(), decoder.decode()];
    std::hint::black_box(InstructionInfoFactory::new().info(&insns[0]).used_memory().len());
    let block = InstructionBlock::new(&insns, 0x10_0000);
    std::hint::black_box(BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).is_ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_work_after_the_warm_up() {
        warm_up();
        warm_up();
        let insn = crate::analyze(&[0x55], crate::Addr(0x1000), crate::Addr(0x1000)).unwrap();
        assert_eq!(insn.len, 1);
    }
}
