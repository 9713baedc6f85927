//! The code writer: every piece of machine code dprobe puts into a process (slots, relocated
//! runs, return stubs, injected system calls, trampolines) is built here, as a list of
//! instructions that iced-x86's `BlockEncoder` lays out at the address it will run from.
//!
//! Relocated instructions keep their original address, so the block encoder re-targets their
//! relative branches and RIP-relative operands (a branch to another instruction of the same
//! block goes to its copy; a jump out of rel32 reach becomes `jmp [rip+x]` with the target
//! stored after the code). Instructions dprobe writes itself carry no address.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, IcedError, Instruction, InstructionBlock, MemoryOperand, Register,
};

use crate::{Addr, Gpr};

/// The encoder refused the code (e.g. a RIP-relative operand out of reach of where the code
/// is to run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

impl From<IcedError> for EncodeError {
    fn from(e: IcedError) -> Self {
        EncodeError(e.to_string())
    }
}

/// Encoded code: its bytes and where each instruction of the writer landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Where the code runs from.
    pub addr: Addr,
    /// The code (any out-of-reach jump targets follow it, aligned to 8).
    pub bytes: Vec<u8>,
    /// Offset in `bytes` of each instruction, in the order they were written.
    pub offsets: Vec<u32>,
}

/// Collects instructions, then encodes them at one address.
#[derive(Debug, Default)]
pub struct CodeWriter {
    insns: Vec<Instruction>,
    error: Option<EncodeError>,
}

impl CodeWriter {
    /// An empty writer.
    pub fn new() -> CodeWriter {
        CodeWriter::default()
    }

    /// Index the next instruction will have in [`Written::offsets`].
    pub fn mark(&self) -> usize {
        self.insns.len()
    }

    fn add(&mut self, insn: Result<Instruction, IcedError>) {
        match insn {
            Ok(i) => self.insns.push(i),
            Err(e) => {
                self.error.get_or_insert(e.into());
            }
        }
    }

    /// The bytes of the original instruction at `original`, copied verbatim (it must not
    /// depend on its address). A branch of the same block to `original` goes to the copy.
    pub fn copy_bytes(&mut self, bytes: &[u8], original: Addr) {
        self.add(Instruction::with_declare_byte(bytes).map(|mut i| {
            i.set_ip(original.0);
            i
        }));
    }

    /// Raw bytes (at most 16), never re-targeted: data inside code, or a fixed short jump.
    pub fn data(&mut self, bytes: &[u8]) {
        self.add(Instruction::with_declare_byte(bytes));
    }

    /// A decoded instruction at its original address: the encoder re-targets it.
    pub fn relocate(&mut self, insn: Instruction) {
        self.insns.push(insn);
    }

    /// `jmp to` (rel8/rel32, or through a stored pointer when out of reach).
    pub fn jmp(&mut self, to: Addr) {
        self.add(Instruction::with_branch(Code::Jmp_rel32_64, to.0));
    }

    /// `jmp qword ptr [at]`: to the address stored at `at`.
    pub fn jmp_through(&mut self, at: Addr) {
        self.add(Instruction::with1(Code::Jmp_rm64, rip_relative(at)));
    }

    /// `call qword ptr [at]`: to the address stored at `at`.
    pub fn call_through(&mut self, at: Addr) {
        self.add(Instruction::with1(Code::Call_rm64, rip_relative(at)));
    }

    /// `ret imm16`: return, then drop `pop` more bytes of stack.
    pub fn ret_pop(&mut self, pop: u16) {
        self.add(Instruction::with1(Code::Retnq_imm16, u32::from(pop)));
    }

    /// `int3`.
    pub fn int3(&mut self) {
        self.add(Ok(Instruction::with(Code::Int3)));
    }

    /// `syscall`.
    pub fn syscall(&mut self) {
        self.add(Ok(Instruction::with(Code::Syscall)));
    }

    /// `rdtsc`.
    pub fn rdtsc(&mut self) {
        self.add(Ok(Instruction::with(Code::Rdtsc)));
    }

    /// `lea rsp, [rsp + delta]`: moves the stack pointer without touching the flags.
    pub fn move_rsp(&mut self, delta: i32) {
        self.add(Instruction::with2(
            Code::Lea_r64_m,
            Register::RSP,
            MemoryOperand::with_base_displ(Register::RSP, i64::from(delta)),
        ));
    }

    /// `push reg`.
    pub fn push(&mut self, reg: Gpr) {
        self.add(Instruction::with1(Code::Push_r64, reg.to_iced()));
    }

    /// `pop reg`.
    pub fn pop(&mut self, reg: Gpr) {
        self.add(Instruction::with1(Code::Pop_r64, reg.to_iced()));
    }

    /// `mov reg, imm64` (always the 10-byte form).
    pub fn mov_imm64(&mut self, reg: Gpr, value: u64) {
        self.add(Instruction::with2(Code::Mov_r64_imm64, reg.to_iced(), value));
    }

    /// `mov dword ptr [rsp + disp], imm32`.
    pub fn store_imm32_on_stack(&mut self, disp: i32, value: u32) {
        self.add(Instruction::with2(
            Code::Mov_rm32_imm32,
            MemoryOperand::with_base_displ(Register::RSP, i64::from(disp)),
            value,
        ));
    }

    /// `mov [at], reg`, RIP-relative.
    pub fn store(&mut self, at: Addr, reg: Gpr) {
        self.add(Instruction::with2(Code::Mov_rm64_r64, rip_relative(at), reg.to_iced()));
    }

    /// `mov [at], reg32`: the register's low 32 bits, RIP-relative.
    pub fn store32(&mut self, at: Addr, reg: Gpr) {
        self.add(Instruction::with2(Code::Mov_rm32_r32, rip_relative(at), reg.to_iced().full_register32()));
    }

    /// `mov reg, [at]` with a 64-bit register, RIP-relative.
    pub fn load(&mut self, reg: Gpr, at: Addr) {
        self.add(Instruction::with2(Code::Mov_r64_rm64, reg.to_iced(), rip_relative(at)));
    }

    /// `mov dword ptr [at], imm32`, RIP-relative.
    pub fn store_imm32(&mut self, at: Addr, value: u32) {
        self.add(Instruction::with2(Code::Mov_rm32_imm32, rip_relative(at), value));
    }

    /// Encode everything to run at `addr`.
    pub fn finish(self, addr: Addr) -> Result<Written, EncodeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let block = InstructionBlock::new(&self.insns, addr.0);
        let result = BlockEncoder::encode(64, block, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        Ok(Written { addr, bytes: result.code_buffer, offsets: result.new_instruction_offsets })
    }
}

fn rip_relative(at: Addr) -> MemoryOperand {
    // iced keeps the absolute target as the displacement of a RIP-relative operand.
    MemoryOperand::with_base_displ(Register::RIP, at.0 as i64)
}

/// The code of one instruction written by `write`, for code injected a few bytes at a time.
fn one(write: impl FnOnce(&mut CodeWriter)) -> Vec<u8> {
    let mut w = CodeWriter::new();
    write(&mut w);
    w.finish(Addr(0)).expect("a fixed instruction encodes").bytes
}

/// The `jmp rel32` at `at` to `to`, always 5 bytes (the block encoder would shorten a near
/// jump, and a patch must cover exactly the bytes it replaces).
///
/// Encoded by hand, without allocating: an engine computes it while patching a batch of
/// probes, when the C library's allocator may itself be probed and each allocation trap.
pub fn jmp_rel32(at: Addr, to: Addr) -> Result<[u8; 5], EncodeError> {
    let rel = (to.0 as i64).wrapping_sub(at.0.wrapping_add(5) as i64);
    let Ok(rel) = i32::try_from(rel) else {
        // Only the error allocates.
        return Err(EncodeError(format!("a jump from {at} to {to} is out of rel32 reach")));
    };
    let mut bytes = [0xe9, 0, 0, 0, 0];
    bytes[1..].copy_from_slice(&rel.to_le_bytes());
    Ok(bytes)
}

/// `lea rsp, [rsp + delta]`, always with a 32-bit displacement (8 bytes): the flags and every
/// other register kept. Encoded by hand, as [`jmp_rel32`]: a detour's fixed parts are built
/// for each of a batch's thousands of probes.
pub fn move_rsp_code(delta: i32) -> [u8; 8] {
    let mut bytes = [0x48, 0x8d, 0xa4, 0x24, 0, 0, 0, 0];
    bytes[4..].copy_from_slice(&delta.to_le_bytes());
    bytes
}

/// `call [rip + x]` at `at`, calling the address stored at `through` (6 bytes).
pub fn call_through_code(at: Addr, through: Addr) -> Result<[u8; 6], EncodeError> {
    let rel = (through.0 as i64).wrapping_sub(at.0.wrapping_add(6) as i64);
    let Ok(rel) = i32::try_from(rel) else {
        return Err(EncodeError(format!("{through} is out of reach of a RIP-relative call at {at}")));
    };
    let mut bytes = [0xff, 0x15, 0, 0, 0, 0];
    bytes[2..].copy_from_slice(&rel.to_le_bytes());
    Ok(bytes)
}

/// `ret imm16`: return, then drop `pop` more bytes of stack (3 bytes).
pub fn ret_pop_code(pop: u16) -> [u8; 3] {
    let [lo, hi] = pop.to_le_bytes();
    [0xc2, lo, hi]
}

/// The `syscall` instruction, written over a stopped thread's instruction pointer to make it
/// run one system call.
pub fn syscall_code() -> Vec<u8> {
    one(CodeWriter::syscall)
}

/// The return trampoline: an `int3` that hijacked return addresses point to.
pub fn trampoline_code() -> Vec<u8> {
    one(CodeWriter::int3)
}
