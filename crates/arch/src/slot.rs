//! Prepare: the relocated copy of an instruction, written into an out-of-line (XOL) slot.
//!
//! A slot is [`SLOT_SIZE`] bytes. Near slots (within ±2 GiB of a RIP-relative target) hold the
//! instruction with its displacement re-targeted; far slots use the uprobes-style rewrite
//! through a scratch register, which the slot saves and restores around the instruction:
//!
//! ```text
//! lea  rsp, [rsp-128]      ; step over the red zone the code may be using
//! push scratch
//! mov  scratch, TARGET
//! <insn with [scratch] instead of [rip+disp]>
//! pop  scratch
//! lea  rsp, [rsp+128]
//! jmp  back | int3
//! ```

use iced_x86::Register;

use crate::writer::CodeWriter;
use crate::{analyze::ExecClass, Addr, Gpr, Insn, Memory, MemoryFault, PrepareError, Regs};

/// Size of one slot in bytes (enough for the longest far-slot sequence).
pub const SLOT_SIZE: usize = 80;

/// How a slot ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotEnding {
    /// "Boosted": jump back to the instruction after the original. One trap per hit.
    JumpBack,
    /// `int3`, so the engine regains control after the instruction to run post-handlers.
    Trap,
}

/// A prepared slot: the bytes to write at `addr`, and how to map states inside it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCode {
    /// Where the slot is.
    pub addr: Addr,
    /// Its code (the first `len` bytes).
    pub bytes: [u8; SLOT_SIZE],
    /// Length of the code.
    pub len: usize,
    /// Offset of the relocated instruction in the slot.
    pub insn_offset: usize,
    /// How the slot ends.
    pub ending: SlotEnding,
    /// The scratch register a far slot saved on the stack, if it is one.
    pub far_scratch: Option<Gpr>,
    /// The original instruction's address.
    pub original: Addr,
    /// The address after the original instruction.
    pub original_next: Addr,
}

impl SlotCode {
    /// The slot's code.
    pub fn code(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Where an engine points RIP on a hit: the start of the slot (a far slot sets up its
    /// scratch register before the instruction).
    pub fn entry(&self) -> Addr {
        self.addr
    }

    /// Where the relocated instruction itself is (after a far slot's prologue).
    pub fn insn_addr(&self) -> Addr {
        self.addr.offset(self.insn_offset as u64)
    }

    /// Address of the final `int3` of a [`SlotEnding::Trap`] slot.
    pub fn trap_addr(&self) -> Option<Addr> {
        (self.ending == SlotEnding::Trap).then(|| self.addr.offset(self.len as u64 - 1))
    }

    /// The post-step fixup: after the slot's final `int3` trapped, continue after the original
    /// instruction (the kernel's `resume_singlestep`).
    pub fn finish_step(&self, regs: &mut Regs) {
        regs.rip = self.original_next.0;
    }

    /// Whether `rip` lies in this slot's code.
    pub fn contains(&self, rip: Addr) -> bool {
        rip >= self.addr && rip < self.addr.offset(self.len as u64)
    }

    /// A fault was raised at `regs.rip` inside the slot: turn `regs` into the state in which
    /// the original instruction would have raised it (RIP at the original, a far slot's
    /// scratch register and stack pointer restored), so that fault handlers and the program's
    /// own signal handlers see the program as if it had never been probed.
    pub fn map_fault<M: Memory + ?Sized>(&self, regs: &mut Regs, mem: &mut M) -> Result<(), MemoryFault> {
        if let Some(scratch) = self.far_scratch {
            if Addr(regs.rip) == self.insn_addr() {
                let saved = mem.read_u64(Addr(regs.rsp))?;
                regs.set(scratch, saved);
                regs.rsp = regs.rsp.wrapping_add(8 + RED_ZONE as u64);
            }
        }
        regs.rip = self.original.0;
        Ok(())
    }
}

/// Write the out-of-line copy of `insn` for a slot at `slot`.
///
/// Emulated instructions take no slot, except an absolute indirect `jmp`/`ret` whose boosted
/// copy is also correct (see [`crate::plan`]).
pub fn prepare_slot(insn: &Insn, slot: Addr, ending: SlotEnding) -> Result<SlotCode, PrepareError> {
    let rip_relative = match insn.class {
        ExecClass::Copy { rip_relative } => rip_relative,
        ExecClass::Emulate { copyable: true, rip_relative, .. } => rip_relative,
        ExecClass::Emulate { .. } => return Err(PrepareError::Emulated(insn.addr)),
    };
    let mut w = CodeWriter::new();
    let mut far_scratch = None;
    let mut at_insn = w.mark();
    match rip_relative {
        // Copied verbatim: the copy is the first instruction of the slot.
        None => w.copy_bytes(insn.code(), insn.addr),
        Some(rel) => {
            let disp = rel.target.0 as i128 - (slot.0 as i128 + insn.len as i128);
            if let Ok(disp) = i32::try_from(disp) {
                let mut bytes = insn.bytes;
                let at = rel.disp_offset as usize;
                bytes[at..at + 4].copy_from_slice(&disp.to_le_bytes());
                w.copy_bytes(&bytes[..insn.len], insn.addr);
            } else {
                let scratch = rel.scratch.ok_or(PrepareError::OutOfReach {
                    addr: insn.addr,
                    target: rel.target,
                    why: "it uses the stack pointer or every scratch register",
                })?;
                far_scratch = Some(scratch);
                at_insn = far_copy(&mut w, insn, rel.target, scratch);
            }
        }
    }
    match ending {
        SlotEnding::Trap => w.int3(),
        SlotEnding::JumpBack => w.jmp(insn.next()),
    }
    let written = w.finish(slot).map_err(|e| PrepareError::Encode { addr: insn.addr, why: e.0 })?;
    let len = written.bytes.len();
    if len > SLOT_SIZE {
        return Err(PrepareError::Encode { addr: insn.addr, why: format!("the copy takes {len} bytes") });
    }
    let mut bytes = [0; SLOT_SIZE];
    bytes[..len].copy_from_slice(&written.bytes);
    Ok(SlotCode {
        addr: slot,
        bytes,
        len,
        insn_offset: written.offsets[at_insn] as usize,
        ending,
        far_scratch,
        original: insn.addr,
        original_next: insn.next(),
    })
}

/// The far form: the operand re-addressed through `scratch`, which holds the target. Returns
/// the writer's index of the rewritten instruction.
fn far_copy(w: &mut CodeWriter, insn: &Insn, target: Addr, scratch: Gpr) -> usize {
    w.move_rsp(-RED_ZONE);
    w.push(scratch);
    w.mov_imm64(scratch, target.0);
    let mut instr = insn.decode();
    instr.set_memory_base(scratch.to_iced());
    instr.set_memory_index(Register::None);
    instr.set_memory_displacement64(0);
    instr.set_memory_displ_size(0);
    let at = w.mark();
    w.relocate(instr);
    w.pop(scratch);
    w.move_rsp(RED_ZONE);
    at
}

/// The System V red zone below the stack pointer, which the probed code may be using.
const RED_ZONE: i32 = 128;
