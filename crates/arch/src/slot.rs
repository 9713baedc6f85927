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
    if let Some(near) = near_slot(insn, rip_relative, slot, ending) {
        return Ok(near);
    }
    encoded_slot(insn, rip_relative, slot, ending)
}

/// The slot as the block encoder lays it out: every far slot, and a near one whose jump back
/// is out of reach.
fn encoded_slot(
    insn: &Insn,
    rip_relative: Option<crate::analyze::RipRelative>,
    slot: Addr,
    ending: SlotEnding,
) -> Result<SlotCode, PrepareError> {
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

/// A near slot, laid out without the block encoder (a batch of ten thousand probes prepares
/// as many): the instruction's bytes (a RIP-relative displacement re-targeted where it stays in
/// reach), then `int3` or a `jmp rel32` back, as the encoder lays them out. `None` for a far
/// slot, or a jump back out of reach (the encoder's path: it goes through a stored pointer).
fn near_slot(
    insn: &Insn,
    rip_relative: Option<crate::analyze::RipRelative>,
    slot: Addr,
    ending: SlotEnding,
) -> Option<SlotCode> {
    let mut bytes = [0; SLOT_SIZE];
    bytes[..insn.len].copy_from_slice(insn.code());
    if let Some(rel) = rip_relative {
        let disp = i32::try_from(rel.target.0 as i128 - (slot.0 as i128 + insn.len as i128)).ok()?;
        let at = rel.disp_offset as usize;
        bytes[at..at + 4].copy_from_slice(&disp.to_le_bytes());
    }
    let mut len = insn.len;
    match ending {
        SlotEnding::Trap => {
            bytes[len] = 0xcc;
            len += 1;
        }
        SlotEnding::JumpBack => {
            let jump = crate::jmp_rel32(slot.offset(len as u64), insn.next()).ok()?;
            bytes[len..len + 5].copy_from_slice(&jump);
            len += 5;
        }
    }
    Some(SlotCode {
        addr: slot,
        bytes,
        len,
        insn_offset: 0,
        ending,
        far_scratch: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots laid out by hand are the encoder's, for copied instructions with and without
    /// a RIP-relative operand (one with an immediate after its displacement), both endings.
    #[test]
    fn a_near_slot_is_what_the_encoder_makes() {
        let at = Addr(0x40_1000);
        let codes: [&[u8]; 6] = [
            &[0x48, 0x89, 0xe5],                                  // mov %rsp,%rbp
            &[0x48, 0x83, 0xc0, 0x07],                            // add $7,%rax
            &[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00],          // mov 0x10(%rip),%rax
            &[0xc7, 0x05, 0x20, 0x00, 0x00, 0x00, 0x2a, 0, 0, 0], // movl $42,0x20(%rip)
            &[0x48, 0x8d, 0x3d, 0xf0, 0xff, 0xff, 0xff],          // lea -0x10(%rip),%rdi
            &[0x48, 0x63, 0xd2],                                  // movslq %edx,%rdx
        ];
        for code in codes {
            let insn = crate::analyze(code, at, at).unwrap();
            let rip_relative = match insn.class {
                ExecClass::Copy { rip_relative } | ExecClass::Emulate { copyable: true, rip_relative, .. } => {
                    rip_relative
                }
                _ => panic!("{code:02x?} is copied"),
            };
            for slot in [Addr(0x50_0000), Addr(0x3000_0000)] {
                for ending in [SlotEnding::JumpBack, SlotEnding::Trap] {
                    let near = near_slot(&insn, rip_relative, slot, ending).expect("in reach");
                    let encoded = encoded_slot(&insn, rip_relative, slot, ending).unwrap();
                    assert_eq!(near, encoded, "{code:02x?} at {slot}, {ending:?}");
                }
            }
        }
        // Out of a rel32's reach of the target or of the way back: the encoder's way.
        let insn = crate::analyze(codes[2], at, at).unwrap();
        let ExecClass::Copy { rip_relative } = insn.class else { unreachable!() };
        assert!(near_slot(&insn, rip_relative, Addr(0x7f00_0000_0000), SlotEnding::JumpBack).is_none());
    }
}
