//! Emulate: execute a branch, call, return, push or nop on the saved registers, so the hit
//! costs one trap and no slot.

use crate::{Addr, Condition, EmulateError, Emulation, MemOperand, Memory, PushValue, Regs};

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// Execute `emulation` (the instruction ending at `next`) on `regs`, reaching the stack and
/// memory operands through `mem`.
///
/// On a memory fault nothing is changed (registers and memory), so the engine can report the
/// fault as the original instruction would have raised it.
pub fn emulate<M: Memory + ?Sized>(
    emulation: Emulation,
    next: Addr,
    regs: &mut Regs,
    mem: &mut M,
) -> Result<(), EmulateError> {
    let rip = match emulation {
        Emulation::Nop => next.0,
        Emulation::Jmp { target } => target.0,
        Emulation::Jcc { cond, target } => {
            if holds(cond, regs.rflags) {
                target.0
            } else {
                next.0
            }
        }
        Emulation::Loop { zf, target } => {
            let rcx = regs.rcx.wrapping_sub(1);
            let zf_set = regs.rflags & ZF != 0;
            regs.rcx = rcx;
            let taken = rcx != 0 && zf.is_none_or(|want| want == zf_set);
            if taken {
                target.0
            } else {
                next.0
            }
        }
        Emulation::Jrcxz { target } => {
            if regs.rcx == 0 {
                target.0
            } else {
                next.0
            }
        }
        Emulation::Call { target } => {
            push(regs, mem, next.0)?;
            target.0
        }
        Emulation::CallReg { reg } => {
            let target = regs.get(reg);
            push(regs, mem, next.0)?;
            target
        }
        Emulation::CallMem { mem: operand } => {
            let target = mem.read_u64(effective_address(&operand, regs))?;
            push(regs, mem, next.0)?;
            target
        }
        Emulation::JmpReg { reg } => regs.get(reg),
        Emulation::JmpMem { mem: operand } => mem.read_u64(effective_address(&operand, regs))?,
        Emulation::Ret { pop } => {
            let target = mem.read_u64(Addr(regs.rsp))?;
            regs.rsp = regs.rsp.wrapping_add(8 + u64::from(pop));
            target
        }
        Emulation::Push { value } => {
            let v = match value {
                PushValue::Reg(r) => regs.get(r),
                PushValue::Imm(v) => v,
            };
            push(regs, mem, v)?;
            next.0
        }
    };
    regs.rip = rip;
    Ok(())
}

/// Push `value` on the stack; `rsp` changes only if the write succeeded.
fn push<M: Memory + ?Sized>(regs: &mut Regs, mem: &mut M, value: u64) -> Result<(), EmulateError> {
    let sp = regs.rsp.wrapping_sub(8);
    mem.write_u64(Addr(sp), value)?;
    regs.rsp = sp;
    Ok(())
}

fn effective_address(m: &MemOperand, regs: &Regs) -> Addr {
    let base = m.base.map_or(0, |r| regs.get(r));
    let index = m.index.map_or(0, |r| regs.get(r).wrapping_mul(u64::from(m.scale)));
    Addr(base.wrapping_add(index).wrapping_add(m.disp))
}

/// Whether `cond` holds for `rflags`.
pub(crate) fn holds(cond: Condition, rflags: u64) -> bool {
    let f = |bit| rflags & bit != 0;
    match cond {
        Condition::O => f(OF),
        Condition::No => !f(OF),
        Condition::B => f(CF),
        Condition::Ae => !f(CF),
        Condition::E => f(ZF),
        Condition::Ne => !f(ZF),
        Condition::Be => f(CF) || f(ZF),
        Condition::A => !f(CF) && !f(ZF),
        Condition::S => f(SF),
        Condition::Ns => !f(SF),
        Condition::P => f(PF),
        Condition::Np => !f(PF),
        Condition::L => f(SF) != f(OF),
        Condition::Ge => f(SF) == f(OF),
        Condition::Le => f(ZF) || f(SF) != f(OF),
        Condition::G => !f(ZF) && f(SF) == f(OF),
    }
}
