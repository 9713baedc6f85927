//! Relocate a run of consecutive instructions: the window a jump-optimized probe displaces
//! (the instructions covering the 5 bytes of its `jmp rel32`), copied to run from elsewhere.
//!
//! Each instruction keeps its meaning at its new address: RIP-relative operands and relative
//! branches are re-targeted (a branch to another instruction of the run goes to its copy), and
//! the copy ends with a jump to the instruction after the run. A call may only end the run:
//! it is rewritten to push the *original* return address and jump, so that the callee returns
//! to the program's own code and unwinders never see the copy. Whatever cannot keep its
//! meaning is refused with a [`RelocateError`].

use iced_x86::Code;

use crate::writer::CodeWriter;
use crate::InsnText;
use crate::{Addr, Emulation, ExecClass, Gpr, Insn, MemOperand};

/// A relocated run: its code and where each instruction's copy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocated {
    /// Where the copy runs from.
    pub addr: Addr,
    /// The copy, ending with the jump back (out-of-reach jump targets stored after it).
    pub code: Vec<u8>,
    /// For each instruction of the run, in order: its original address and its copy's.
    pub map: Vec<(Addr, Addr)>,
    /// The address after the run, where the copy continues in the original code.
    pub original_end: Addr,
    /// Where the copy continues after its first instruction (a post block, or the next
    /// instruction's copy): where a thread that ran the first instruction elsewhere resumes.
    pub after_first: Addr,
}

impl Relocated {
    /// Where the copy of the instruction at `original` starts (to move a thread stopped at an
    /// instruction of the run into the copy).
    pub fn copy_of(&self, original: Addr) -> Option<Addr> {
        self.map.iter().find(|(o, _)| *o == original).map(|(_, c)| *c)
    }

    /// The original instruction whose copy starts at `copy` (to report a fault inside the copy
    /// at the program's own address).
    pub fn original_of(&self, copy: Addr) -> Option<Addr> {
        self.map.iter().find(|(_, c)| *c == copy).map(|(o, _)| *o)
    }

    /// Whether `addr` lies in the copy.
    pub fn contains(&self, addr: Addr) -> bool {
        addr >= self.addr && addr < self.addr.offset(self.code.len() as u64)
    }
}

/// Why a run cannot be relocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    /// No instruction to relocate.
    #[error("the run is empty")]
    Empty,
    /// The instructions do not follow each other.
    #[error("the instruction at {next} does not follow the one before it, which ends at {expected}")]
    NotConsecutive {
        /// Where the next instruction should start.
        expected: Addr,
        /// Where it starts.
        next: Addr,
    },
    /// A call before the end of the run: its return address would point into the bytes the
    /// probe's jump replaces.
    #[error("`{text}` at {addr} is a call before the end of the run: it would return into the replaced bytes")]
    CallNotLast {
        /// The call.
        addr: Addr,
        /// The instruction, disassembled.
        text: InsnText,
    },
    /// A jump or return before the end of the run: the instructions after it are not part of
    /// the flow the probe displaces.
    #[error("`{text}` at {addr} leaves the run before its end")]
    TransferNotLast {
        /// The jump or return.
        addr: Addr,
        /// The instruction, disassembled.
        text: InsnText,
    },
    /// An indirect call that reads its target relative to the stack pointer, which the
    /// rewritten call moves before the jump.
    #[error("`{text}` at {addr} calls through the stack pointer, which the relocated call moves first")]
    StackRelativeCall {
        /// The call.
        addr: Addr,
        /// The instruction, disassembled.
        text: InsnText,
    },
    /// A branch of the run targets the inside of one of its instructions.
    #[error("the branch at {addr} targets {target}, inside an instruction of the run")]
    BranchIntoInstruction {
        /// The branch.
        addr: Addr,
        /// Its target.
        target: Addr,
    },
    /// A RIP-relative operand cannot reach its target from the copy.
    #[error(
        "the RIP-relative operand of the instruction at {addr} refers to {target}, out of reach of a copy at {copy}"
    )]
    OutOfReach {
        /// The instruction.
        addr: Addr,
        /// Its operand's target.
        target: Addr,
        /// Where the copy was to be.
        copy: Addr,
    },
    /// The encoder refused the copy.
    #[error("cannot encode the relocated run: {0}")]
    Encode(String),
}

/// How far a RIP-relative target may be from the copy's start: a rel32 less the run's size.
const REACH: u64 = (1 << 31) - 4096;

/// Relocate `run` (consecutive analyzed instructions) to run from `at`.
pub fn relocate(run: &[Insn], at: Addr) -> Result<Relocated, RelocateError> {
    relocate_with(run, at, &|_| {})
}

/// [`relocate`], with the code `after_first` writes placed between the copy of the first
/// instruction and the rest (a detour's post block). It must fall through, touching no
/// register or flag of the program's.
pub fn relocate_with(
    run: &[Insn],
    at: Addr,
    after_first: &dyn Fn(&mut CodeWriter),
) -> Result<Relocated, RelocateError> {
    relocate_then(run, at, after_first, None)
}

/// [`relocate_with`], continuing at `then` (instead of the instruction after the run) when
/// the run falls through: an exit detour's copy of the instructions before the exit goes on
/// to the detour's head.
pub(crate) fn relocate_then(
    run: &[Insn],
    at: Addr,
    after_first: &dyn Fn(&mut CodeWriter),
    then: Option<Addr>,
) -> Result<Relocated, RelocateError> {
    let first = run.first().ok_or(RelocateError::Empty)?;
    for pair in run.windows(2) {
        if pair[0].next() != pair[1].addr {
            return Err(RelocateError::NotConsecutive { expected: pair[0].next(), next: pair[1].addr });
        }
    }
    let end = run.last().map_or(first.addr, Insn::next);
    if let Some(copied) = copied_as_they_are(run, at, after_first, then.unwrap_or(end)) {
        return Ok(copied);
    }
    let inside = |a: Addr| a >= first.addr && a < end;
    let mut w = CodeWriter::new();
    let mut marks = Vec::with_capacity(run.len());
    let mut first_end = 0;
    let mut falls_through = true;
    for (k, insn) in run.iter().enumerate() {
        marks.push(w.mark());
        let last = k + 1 == run.len();
        let decoded = insn.decode();
        if decoded.is_ip_rel_memory_operand() {
            let target = Addr(decoded.ip_rel_memory_address());
            if target.0.abs_diff(at.0) > REACH {
                return Err(RelocateError::OutOfReach { addr: insn.addr, target, copy: at });
            }
        }
        let branch = match insn.class {
            ExecClass::Emulate { emulation, .. } => branch_target(emulation),
            ExecClass::Copy { .. } => None,
        };
        if let Some(target) = branch.filter(|t| inside(*t) && !run.iter().any(|i| i.addr == *t)) {
            return Err(RelocateError::BranchIntoInstruction { addr: insn.addr, target });
        }
        match insn.class {
            ExecClass::Emulate { emulation, .. } if is_call(emulation) => {
                if !last {
                    return Err(RelocateError::CallNotLast { addr: insn.addr, text: insn.text_when_shown() });
                }
                if uses_stack_pointer(emulation) {
                    return Err(RelocateError::StackRelativeCall { addr: insn.addr, text: insn.text_when_shown() });
                }
                push_return_address(&mut w, insn.next());
                match emulation {
                    Emulation::Call { target } => w.jmp(target),
                    _ => {
                        let mut jump = decoded;
                        jump.set_code(Code::Jmp_rm64);
                        w.relocate(jump);
                    }
                }
                falls_through = false;
            }
            ExecClass::Emulate { emulation, .. } if is_transfer(emulation) => {
                if !last {
                    return Err(RelocateError::TransferNotLast { addr: insn.addr, text: insn.text_when_shown() });
                }
                w.relocate(decoded);
                falls_through = false;
            }
            // Branches and RIP-relative operands are re-targeted by the encoder; anything else
            // is copied byte for byte.
            _ if branch.is_some() || decoded.is_ip_rel_memory_operand() => w.relocate(decoded),
            _ => w.copy_bytes(insn.code(), insn.addr),
        }
        if k == 0 {
            first_end = w.mark();
            after_first(&mut w);
        }
    }
    if falls_through {
        w.jmp(then.unwrap_or(end));
    }
    let written = w.finish(at).map_err(|e| RelocateError::Encode(e.0))?;
    let map = run.iter().zip(marks).map(|(i, m)| (i.addr, at.offset(u64::from(written.offsets[m])))).collect();
    let after_first = at.offset(written.offsets.get(first_end).map_or(written.bytes.len() as u64, |o| u64::from(*o)));
    Ok(Relocated { addr: at, code: written.bytes, map, original_end: end, after_first })
}

/// The copy of `run` to run from `at` when no instruction of it depends on its address (no
/// branch, call, return or RIP-relative operand), nothing goes after the first, and `then` is
/// in a `jmp rel32`'s reach: its bytes, then that jump. What the block encoder would lay out,
/// without its cost (a batch of ten thousand jump-optimized probes builds as many detours), but
/// for a jump short enough for `rel8` (an exit detour's copy jumping to its own entry), kept
/// as `rel32` here: 3 bytes more, well within a detour's room.
fn copied_as_they_are(run: &[Insn], at: Addr, after_first: &dyn Fn(&mut CodeWriter), then: Addr) -> Option<Relocated> {
    let mut between = CodeWriter::new();
    after_first(&mut between);
    if between.mark() != 0 {
        return None;
    }
    let as_it_is = |insn: &Insn| match insn.class {
        ExecClass::Emulate { emulation, .. } => {
            !is_call(emulation) && !is_transfer(emulation) && branch_target(emulation).is_none()
        }
        ExecClass::Copy { .. } => true,
    };
    if !run.iter().all(|insn| as_it_is(insn) && !insn.decode().is_ip_rel_memory_operand()) {
        return None;
    }
    let mut code = Vec::with_capacity(run.iter().map(|i| i.len).sum::<usize>() + 5);
    let mut map = Vec::with_capacity(run.len());
    for insn in run {
        map.push((insn.addr, at.offset(code.len() as u64)));
        code.extend_from_slice(insn.code());
    }
    let jump = crate::jmp_rel32(at.offset(code.len() as u64), then).ok()?;
    code.extend_from_slice(&jump);
    let after_first = at.offset(run[0].len as u64);
    let original_end = run.last().map_or(run[0].addr, Insn::next);
    Some(Relocated { addr: at, code, map, original_end, after_first })
}

/// `lea rsp, [rsp-8]; mov dword [rsp], lo; mov dword [rsp+4], hi`: what a call pushes,
/// without touching the flags or any register but the stack pointer.
fn push_return_address(w: &mut CodeWriter, ret: Addr) {
    w.move_rsp(-8);
    w.store_imm32_on_stack(0, ret.0 as u32);
    w.store_imm32_on_stack(4, (ret.0 >> 32) as u32);
}

fn is_call(e: Emulation) -> bool {
    matches!(e, Emulation::Call { .. } | Emulation::CallReg { .. } | Emulation::CallMem { .. })
}

fn is_transfer(e: Emulation) -> bool {
    matches!(e, Emulation::Jmp { .. } | Emulation::JmpReg { .. } | Emulation::JmpMem { .. } | Emulation::Ret { .. })
}

fn uses_stack_pointer(e: Emulation) -> bool {
    match e {
        Emulation::CallReg { reg } => reg == Gpr::Rsp,
        Emulation::CallMem { mem: MemOperand { base, index, .. } } => base == Some(Gpr::Rsp) || index == Some(Gpr::Rsp),
        _ => false,
    }
}

fn branch_target(e: Emulation) -> Option<Addr> {
    match e {
        Emulation::Jmp { target }
        | Emulation::Jcc { target, .. }
        | Emulation::Loop { target, .. }
        | Emulation::Jrcxz { target }
        | Emulation::Call { target } => Some(target),
        _ => None,
    }
}
