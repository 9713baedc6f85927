//! Classification of instructions: bytes in, class out, one behaviour per test.
use dprobe_arch::*;

const AT: Addr = Addr(0x40_1000);

fn class(bytes: &[u8]) -> ExecClass {
    analyze(bytes, AT, AT).expect("probe-able").class
}

fn refused(bytes: &[u8]) -> Unsupported {
    match analyze(bytes, AT, AT) {
        Err(AnalyzeError::Unsupported { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn emulated(bytes: &[u8]) -> Emulation {
    match class(bytes) {
        ExecClass::Emulate { emulation, .. } => emulation,
        other => panic!("expected emulation, got {other:?}"),
    }
}

#[test]
fn push_rbp_is_emulated() {
    assert_eq!(emulated(&[0x55 /* push %rbp */]), Emulation::Push { value: PushValue::Reg(Gpr::Rbp) });
}

#[test]
fn push_r12_is_emulated() {
    assert_eq!(emulated(&[0x41, 0x54 /* push %r12 */]), Emulation::Push { value: PushValue::Reg(Gpr::R12) });
}

#[test]
fn push_imm8_is_sign_extended() {
    assert_eq!(emulated(&[0x6a, 0xff /* push $-1 */]), Emulation::Push { value: PushValue::Imm(u64::MAX) });
}

#[test]
fn mov_rbp_rsp_is_copied_verbatim() {
    assert_eq!(class(&[0x48, 0x89, 0xe5 /* mov %rsp,%rbp */]), ExecClass::Copy { rip_relative: None });
}

#[test]
fn endbr64_and_nops_are_emulated_as_nop() {
    assert_eq!(emulated(&[0xf3, 0x0f, 0x1e, 0xfa /* endbr64 */]), Emulation::Nop);
    assert_eq!(emulated(&[0x90 /* nop */]), Emulation::Nop);
    assert_eq!(emulated(&[0x0f, 0x1f, 0x44, 0x00, 0x00 /* nopl 0(%rax,%rax) */]), Emulation::Nop);
    assert_eq!(emulated(&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0 /* nopw 0(%rax,%rax) */]), Emulation::Nop);
}

#[test]
fn rex_b_90_is_xchg_not_nop() {
    assert_eq!(class(&[0x41, 0x90 /* xchg %eax,%r8d */]), ExecClass::Copy { rip_relative: None });
}

#[test]
fn short_jmp_target_is_absolute() {
    assert_eq!(emulated(&[0xeb, 0xfe /* jmp . */]), Emulation::Jmp { target: AT });
}

#[test]
fn jne_rel8_backwards() {
    assert_eq!(emulated(&[0x75, 0xfd /* jne .-1 */]), Emulation::Jcc { cond: Condition::Ne, target: Addr(AT.0 - 1) });
}

#[test]
fn jg_rel32() {
    assert_eq!(
        emulated(&[0x0f, 0x8f, 0x00, 0x01, 0x00, 0x00 /* jg .+0x106 */]),
        Emulation::Jcc { cond: Condition::G, target: Addr(AT.0 + 6 + 0x100) }
    );
}

#[test]
fn call_rel32_is_emulated() {
    assert_eq!(emulated(&[0xe8, 0x10, 0, 0, 0 /* call .+0x15 */]), Emulation::Call { target: Addr(AT.0 + 0x15) });
}

#[test]
fn call_and_jmp_through_register() {
    assert_eq!(emulated(&[0xff, 0xd0 /* call *%rax */]), Emulation::CallReg { reg: Gpr::Rax });
    assert_eq!(emulated(&[0x41, 0xff, 0xe3 /* jmp *%r11 */]), Emulation::JmpReg { reg: Gpr::R11 });
}

#[test]
fn plt_jmp_through_rip_relative_memory() {
    // jmp *0x2fe2(%rip): the GOT slot is resolved to an absolute address.
    let e = emulated(&[0xff, 0x25, 0xe2, 0x2f, 0x00, 0x00]);
    assert_eq!(e, Emulation::JmpMem { mem: MemOperand { base: None, index: None, scale: 1, disp: AT.0 + 6 + 0x2fe2 } });
    // Its boosted copy must re-target the displacement (and cannot use a far slot).
    let insn = analyze(&[0xff, 0x25, 0xe2, 0x2f, 0, 0], AT, AT).unwrap();
    let slot = prepare_slot(&insn, Addr(0x50_0000), SlotEnding::JumpBack).unwrap();
    let disp = (AT.0 + 6 + 0x2fe2) as i64 - (0x50_0000 + 6);
    assert_eq!(&slot.code()[2..6], &(disp as i32).to_le_bytes());
    assert!(matches!(
        prepare_slot(&insn, Addr(0x7f00_0000_0000), SlotEnding::JumpBack),
        Err(PrepareError::OutOfReach { .. })
    ));
    assert_eq!(
        plan(&analyze(&[0xff, 0x25, 0xe2, 0x2f, 0, 0], AT, AT).unwrap(), false),
        ExecPlan::Slot(SlotEnding::JumpBack)
    );
    assert_eq!(plan(&analyze(&[0xff, 0x25, 0xe2, 0x2f, 0, 0], AT, AT).unwrap(), true), ExecPlan::Emulate(e));
}

#[test]
fn call_through_scaled_index() {
    assert_eq!(
        emulated(&[0xff, 0x54, 0xc3, 0x08 /* call *0x8(%rbx,%rax,8) */]),
        Emulation::CallMem { mem: MemOperand { base: Some(Gpr::Rbx), index: Some(Gpr::Rax), scale: 8, disp: 8 } }
    );
}

#[test]
fn ret_and_ret_imm16() {
    assert_eq!(emulated(&[0xc3]), Emulation::Ret { pop: 0 });
    assert_eq!(emulated(&[0xc2, 0x10, 0x00 /* ret $16 */]), Emulation::Ret { pop: 16 });
}

#[test]
fn loop_and_jrcxz() {
    assert_eq!(emulated(&[0xe2, 0x00 /* loop .+2 */]), Emulation::Loop { zf: None, target: Addr(AT.0 + 2) });
    assert_eq!(emulated(&[0xe1, 0x00 /* loope .+2 */]), Emulation::Loop { zf: Some(true), target: Addr(AT.0 + 2) });
    assert_eq!(emulated(&[0xe3, 0x00 /* jrcxz .+2 */]), Emulation::Jrcxz { target: Addr(AT.0 + 2) });
}

#[test]
fn rip_relative_load_records_target_and_a_free_scratch() {
    // mov 0x10(%rip),%eax: uses rax, so the scratch is the next free one, rcx.
    let c = class(&[0x8b, 0x05, 0x10, 0x00, 0x00, 0x00]);
    assert_eq!(
        c,
        ExecClass::Copy {
            rip_relative: Some(RipRelative { target: Addr(AT.0 + 6 + 0x10), disp_offset: 2, scratch: Some(Gpr::Rcx) })
        }
    );
}

#[test]
fn rip_relative_cmpxchg_avoids_implicit_rax() {
    // lock cmpxchg %ecx,0x8(%rip): rax (implicit) and rcx are used.
    let c = class(&[0xf0, 0x0f, 0xb1, 0x0d, 0x08, 0, 0, 0]);
    let ExecClass::Copy { rip_relative: Some(r) } = c else { panic!("{c:?}") };
    assert_eq!(r.scratch, Some(Gpr::Rdx));
    assert_eq!(r.disp_offset, 4);
}

#[test]
fn rip_relative_push_has_no_scratch() {
    // push 0x10(%rip) moves the stack pointer: the far rewrite cannot be used.
    let ExecClass::Copy { rip_relative: Some(r) } = class(&[0xff, 0x35, 0x10, 0, 0, 0]) else { panic!() };
    assert_eq!(r.scratch, None);
}

#[test]
fn refusals_each_have_their_class() {
    assert_eq!(refused(&[0xcc /* int3 */]), Unsupported::Breakpoint);
    assert_eq!(refused(&[0xf1 /* int1 */]), Unsupported::Breakpoint);
    assert_eq!(refused(&[0xcd, 0x80 /* int $0x80 */]), Unsupported::SoftwareInterrupt);
    assert_eq!(refused(&[0x0f, 0x05 /* syscall */]), Unsupported::SystemCall);
    assert_eq!(refused(&[0x0f, 0x34 /* sysenter */]), Unsupported::SystemCall);
    assert_eq!(refused(&[0xf4 /* hlt */]), Unsupported::Privileged);
    assert_eq!(refused(&[0xec /* in (%dx),%al */]), Unsupported::Privileged);
    assert_eq!(refused(&[0xfa /* cli */]), Unsupported::Privileged);
    assert_eq!(refused(&[0x0f, 0x0b /* ud2 */]), Unsupported::Undefined);
    assert_eq!(refused(&[0xc7, 0xf8, 0, 0, 0, 0 /* xbegin */]), Unsupported::Transactional);
    assert_eq!(refused(&[0xcb /* lret */]), Unsupported::FarTransfer);
    assert_eq!(refused(&[0x48, 0xcf /* iretq */]), Unsupported::FarTransfer);
    assert_eq!(refused(&[0xff, 0x1c, 0x24 /* lcall *(%rsp) */]), Unsupported::FarTransfer);
    assert_eq!(refused(&[0x8e, 0xd0 /* mov %ax,%ss */]), Unsupported::StackSegmentLoad);
    assert_eq!(refused(&[0x67, 0xe3, 0x00 /* jecxz */]), Unsupported::SizeOverriddenBranch);
    assert_eq!(
        refused(&[0x64, 0xff, 0x14, 0x25, 0x10, 0, 0, 0 /* call *%fs:0x10 */]),
        Unsupported::SegmentIndirectBranch
    );
    assert_eq!(refused(&[0x06, 0x90 /* (bad) in 64-bit mode */]), Unsupported::Undefined);
}

#[test]
fn refusal_message_names_instruction_and_reason() {
    let e = analyze(&[0x0f, 0x05], AT, AT).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("cannot probe `syscall` at 0x401000: it is a system call instruction"), "{msg}");
}

#[test]
fn address_inside_an_instruction_is_refused() {
    // movabs $0x1122334455667788,%rax (10 bytes), then ret.
    let code = [0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xc3];
    assert_eq!(
        analyze(&code, AT, AT.offset(3)),
        Err(AnalyzeError::NotInstructionBoundary { addr: AT.offset(3), insn_start: AT, insn_len: 10 })
    );
    assert_eq!(
        analyze(&code, AT, AT.offset(10)).unwrap().class,
        ExecClass::Emulate { emulation: Emulation::Ret { pop: 0 }, copyable: true, rip_relative: None }
    );
}

#[test]
fn address_outside_code_and_truncated_code() {
    assert!(matches!(analyze(&[0x90], AT, AT.offset(1)), Err(AnalyzeError::OutsideCode { .. })));
    assert_eq!(analyze(&[0x48, 0xb8, 0x88], AT, AT), Err(AnalyzeError::Truncated { addr: AT }));
}

#[test]
fn arm_and_disarm_patch_the_first_byte() {
    let insn = analyze(&[0x48, 0x89, 0xe5], AT, AT).unwrap();
    assert_eq!(arm(&insn), Patch { addr: AT, old: vec![0x48], new: vec![INT3] });
    assert_eq!(disarm(&insn), Patch { addr: AT, old: vec![INT3], new: vec![0x48] });
}

#[test]
fn an_endbr64_at_a_function_entry_is_recognized_by_its_length() {
    assert_eq!(endbr64_len(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
    assert_eq!(endbr64_len(&[0x55, 0xf3, 0x0f, 0x1e, 0xfa]), 0);
    assert_eq!(endbr64_len(&[0xf3, 0x0f, 0x1e, 0xfb /* endbr32 */]), 0);
    assert_eq!(endbr64_len(&[0xf3, 0x0f]), 0);
}
