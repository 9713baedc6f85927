//! Prepare: everything an engine needs to place a probe on an analyzed instruction, decided
//! once at registration (the kernel's `arch_prepare_kprobe`): how a hit executes the
//! instruction, the relocated copy when that takes a slot, and the patches that arm and
//! disarm the probe. The engine supplies slot addresses and applies the patches; the choice
//! and the code are made here, the same for every engine.

use crate::{
    arm, disarm, plan, prepare_slot, Addr, ExecClass, ExecPlan, Insn, Patch, PrepareError, Regs, SlotCode, SlotEnding,
};

/// How an engine executes the instruction at a probe address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The original instruction.
    pub insn: Insn,
    /// Emulate it, or run it in `slot`.
    pub plan: ExecPlan,
    /// The relocated copy the plan runs, to be written at its address (`None` when emulated).
    pub slot: Option<SlotCode>,
}

impl Prepared {
    /// The patch that arms the probe.
    pub fn arm(&self) -> Patch {
        arm(&self.insn)
    }

    /// The patch that disarms it, restoring the original bytes.
    pub fn disarm(&self) -> Patch {
        disarm(&self.insn)
    }

    /// After a post-step slot's final `int3` trapped: continue after the original instruction
    /// (the kernel's `resume_singlestep`).
    pub fn finish_step(&self, regs: &mut Regs) {
        regs.rip = self.step_resume().0;
    }

    /// Where a thread continues once a post-step slot's final `int3` trapped, for a caller
    /// that moves only RIP (the trap path's nested hits, which build no `Regs`).
    pub fn step_resume(&self) -> Addr {
        self.insn.next()
    }

    /// Where a hit sends the thread to run the instruction out of line, if the plan takes a
    /// slot.
    pub fn slot_entry(&self) -> Option<Addr> {
        self.slot.as_ref().map(SlotCode::entry)
    }

    /// The plan in a word: `emulated`, `boosted` or `post-step`.
    pub fn execution(&self) -> &'static str {
        match self.plan {
            ExecPlan::Emulate(_) => "emulated",
            ExecPlan::Slot(SlotEnding::JumpBack) => "boosted",
            ExecPlan::Slot(SlotEnding::Trap) => "post-step",
        }
    }
}

/// Prepare `insn` for a probe; `needs_post` is whether a post-handler must run after it.
///
/// When the plan takes a slot, `slot_at` is asked for the address of one near the instruction
/// (the engine maps its pages; it may hand back a slot it built before with the same ending,
/// the code is the same). An instruction that can also be emulated falls back to emulation
/// when no slot can be had or built; for any other, the error is returned.
pub fn prepare<E: From<PrepareError>>(
    insn: &Insn,
    needs_post: bool,
    slot_at: impl FnOnce(SlotEnding) -> Result<Addr, E>,
) -> Result<Prepared, E> {
    let ExecPlan::Slot(ending) = plan(insn, needs_post) else {
        return Ok(Prepared { insn: insn.clone(), plan: plan(insn, needs_post), slot: None });
    };
    let slot = slot_at(ending).and_then(|at| prepare_slot(insn, at, ending).map_err(E::from));
    match (slot, insn.class) {
        (Ok(slot), _) => Ok(Prepared { insn: insn.clone(), plan: ExecPlan::Slot(ending), slot: Some(slot) }),
        // A boosted copy of an absolute branch is only faster than emulating it.
        (Err(_), ExecClass::Emulate { emulation, .. }) => {
            Ok(Prepared { insn: insn.clone(), plan: ExecPlan::Emulate(emulation), slot: None })
        }
        (Err(e), ExecClass::Copy { .. }) => Err(e),
    }
}
