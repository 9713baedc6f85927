//! Prepare: the plan, the slot and the patches an engine gets for an analyzed instruction.
use dprobe_arch::*;

const AT: Addr = Addr(0x40_1000);
const SLOT: Addr = Addr(0x50_0000);

fn insn(bytes: &[u8]) -> Insn {
    analyze(bytes, AT, AT).unwrap()
}

fn no_slot(_: SlotEnding) -> Result<Addr, PrepareError> {
    panic!("an emulated instruction asks for no slot")
}

#[test]
fn an_emulated_instruction_takes_no_slot() {
    let p = prepare(&insn(&[0x55 /* push %rbp */]), true, no_slot).unwrap();
    assert_eq!(p.plan, ExecPlan::Emulate(Emulation::Push { value: PushValue::Reg(Gpr::Rbp) }));
    assert_eq!((&p.slot, p.execution()), (&None, "emulated"));
}

#[test]
fn a_copied_instruction_is_boosted_without_post_handler_and_post_stepped_with_one() {
    let mov = insn(&[0x48, 0x89, 0xe5 /* mov %rsp,%rbp */]);
    let mut asked = Vec::new();
    let boosted = prepare(&mov, false, |e| {
        asked.push(e);
        Ok::<_, PrepareError>(SLOT)
    })
    .unwrap();
    assert_eq!((boosted.plan, boosted.execution()), (ExecPlan::Slot(SlotEnding::JumpBack), "boosted"));
    assert_eq!(boosted.slot, Some(prepare_slot(&mov, SLOT, SlotEnding::JumpBack).unwrap()));
    assert_eq!(boosted.slot_entry(), Some(SLOT));

    let post = prepare(&mov, true, |e| {
        asked.push(e);
        Ok::<_, PrepareError>(SLOT)
    })
    .unwrap();
    assert_eq!((post.plan, post.execution()), (ExecPlan::Slot(SlotEnding::Trap), "post-step"));
    assert_eq!(post.slot.as_ref().unwrap().trap_addr(), Some(SLOT.offset(3)));
    assert_eq!(asked, [SlotEnding::JumpBack, SlotEnding::Trap]);

    // After the slot's int3: on after the original instruction.
    let mut regs = Regs { rip: SLOT.0 + 4, ..Regs::default() };
    post.finish_step(&mut regs);
    assert_eq!(regs.rip, AT.0 + 3);
}

#[test]
fn an_absolute_jump_is_boosted_and_falls_back_to_emulation_without_slot() {
    let jmp = insn(&[0xff, 0x25, 0x10, 0, 0, 0 /* jmp *0x10(%rip) */]);
    let boosted = prepare(&jmp, false, |_| Ok::<_, PrepareError>(SLOT)).unwrap();
    assert_eq!(boosted.plan, ExecPlan::Slot(SlotEnding::JumpBack));

    let refused = |_| Err(PrepareError::Emulated(Addr(0)));
    let emulated = prepare(&jmp, false, refused).unwrap();
    assert!(matches!(emulated.plan, ExecPlan::Emulate(Emulation::JmpMem { .. })));
    assert_eq!(emulated.slot, None);

    // Out of reach of a far slot (no scratch-register form for a branch): emulated too.
    let far = prepare(&jmp, false, |_| Ok::<_, PrepareError>(Addr(0x7f00_0000_0000))).unwrap();
    assert!(matches!(far.plan, ExecPlan::Emulate(Emulation::JmpMem { .. })));
}

#[test]
fn a_copied_instruction_without_slot_is_refused_with_the_engines_reason() {
    let mov = insn(&[0x48, 0x89, 0xe5]);
    #[derive(Debug, PartialEq)]
    enum EngineError {
        NoPage,
        Prepare(PrepareError),
    }
    impl From<PrepareError> for EngineError {
        fn from(e: PrepareError) -> Self {
            EngineError::Prepare(e)
        }
    }
    assert_eq!(prepare(&mov, false, |_| Err(EngineError::NoPage)), Err(EngineError::NoPage));
    // push 0x10(%rip) cannot take a far slot: the arch layer's reason.
    let push = insn(&[0xff, 0x35, 0x10, 0, 0, 0]);
    let far = prepare(&push, false, |_| Ok::<_, EngineError>(Addr(0x7f00_0000_0000)));
    assert!(matches!(far, Err(EngineError::Prepare(PrepareError::OutOfReach { .. }))));
}

#[test]
fn arm_and_disarm_patch_the_first_byte_and_analysis_sees_through_them() {
    let mov = insn(&[0x48, 0x89, 0xe5]);
    let p = prepare(&mov, false, |_| Ok::<_, PrepareError>(SLOT)).unwrap();
    assert_eq!(p.arm(), Patch { addr: AT, old: vec![0x48], new: vec![INT3] });
    assert_eq!(p.disarm(), Patch { addr: AT, old: vec![INT3], new: vec![0x48] });

    // A function whose second instruction is armed: reverting gives the original bytes back.
    let start = Addr(AT.0 - 1);
    let mut code = vec![0x55, INT3, 0x89, 0xe5, 0xc3];
    p.arm().revert_in(&mut code, start);
    assert_eq!(code, [0x55, 0x48, 0x89, 0xe5, 0xc3]);
    // Patches outside the code are left alone.
    let mut other = vec![0x90; 4];
    p.arm().revert_in(&mut other, Addr(AT.0 + 1));
    p.arm().revert_in(&mut other, Addr(AT.0 - 10));
    assert_eq!(other, [0x90; 4]);
}
