//! Relocated copies: bytes in, slot bytes out.
use dprobe_arch::*;

const AT: Addr = Addr(0x40_1000);

#[test]
fn boosted_copy_ends_in_jmp_back() {
    let insn = analyze(&[0x48, 0x89, 0xe5 /* mov %rsp,%rbp */], AT, AT).unwrap();
    let slot = prepare_slot(&insn, Addr(0x50_0000), SlotEnding::JumpBack).unwrap();
    let back = (AT.0 + 3) as i64 - (0x50_0000 + 3 + 5) as i64;
    let mut want = vec![0x48, 0x89, 0xe5, 0xe9];
    want.extend_from_slice(&(back as i32).to_le_bytes());
    assert_eq!(slot.code(), &want[..]);
    assert_eq!(slot.entry(), Addr(0x50_0000));
    assert_eq!(slot.trap_addr(), None);
}

#[test]
fn trap_ending_copy_and_fixup() {
    let insn = analyze(&[0x48, 0x89, 0xe5], AT, AT).unwrap();
    let slot = prepare_slot(&insn, Addr(0x50_0000), SlotEnding::Trap).unwrap();
    assert_eq!(slot.code(), &[0x48, 0x89, 0xe5, 0xcc]);
    assert_eq!(slot.trap_addr(), Some(Addr(0x50_0003)));
    let mut regs = Regs { rip: 0x50_0004, ..Regs::default() };
    slot.finish_step(&mut regs);
    assert_eq!(regs.rip, AT.0 + 3);
}

#[test]
fn far_jump_back_uses_absolute_form() {
    let insn = analyze(&[0x90 + 1 /* xchg %eax,%ecx */], AT, AT).unwrap();
    let slot = prepare_slot(&insn, Addr(0x7f00_0000_0000), SlotEnding::JumpBack).unwrap();
    let code = slot.code();
    // xchg, then jmp *disp(%rip) whose pointer, stored after the code, is the instruction after
    // the original.
    assert_eq!(&code[..3], &[0x91, 0xff, 0x25]);
    let disp = i32::from_le_bytes(code[3..7].try_into().unwrap()) as usize;
    assert_eq!(&code[7 + disp..7 + disp + 8], &(AT.0 + 1).to_le_bytes());
    assert_eq!(code.len(), 7 + disp + 8);
}

#[test]
fn rip_relative_displacement_is_retargeted_in_a_near_slot() {
    // mov 0x10(%rip),%eax at AT reads AT+6+0x10.
    let insn = analyze(&[0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], AT, AT).unwrap();
    let slot = prepare_slot(&insn, Addr(0x50_0000), SlotEnding::Trap).unwrap();
    let disp = (AT.0 + 0x16) as i64 - 0x50_0006;
    let mut want = vec![0x8b, 0x05];
    want.extend_from_slice(&(disp as i32).to_le_bytes());
    want.push(0xcc);
    assert_eq!(slot.code(), &want[..]);
}

#[test]
fn rip_relative_far_slot_goes_through_scratch_register() {
    let insn = analyze(&[0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], AT, AT).unwrap();
    let far = Addr(0x7f00_0000_0000);
    let slot = prepare_slot(&insn, far, SlotEnding::Trap).unwrap();
    let mut want = vec![
        0x48, 0x8d, 0x64, 0x24, 0x80, /* lea -0x80(%rsp),%rsp */
        0x51, /* push %rcx */
        0x48, 0xb9, /* movabs $target,%rcx */
    ];
    want.extend_from_slice(&(AT.0 + 0x16).to_le_bytes());
    want.extend_from_slice(&[0x8b, 0x01 /* mov (%rcx),%eax */, 0x59 /* pop %rcx */]);
    want.extend_from_slice(&[0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0 /* lea 0x80(%rsp),%rsp */, 0xcc]);
    assert_eq!(slot.code(), &want[..]);
    assert_eq!(slot.far_scratch, Some(Gpr::Rcx));
    assert_eq!(slot.entry(), far);
    assert_eq!(slot.insn_addr(), far.offset(16));
}

#[test]
fn rip_relative_far_slot_with_extended_scratch() {
    // mov 0x10(%rip),%eax with rax..r8 all in use is contrived; instead check r8 encoding via
    // an instruction that uses rax, rcx, rdx, rbx, rsi, rdi: cmpxchg16b uses rax,rbx,rcx,rdx.
    // lock cmpxchg16b 0x10(%rip)
    let insn = analyze(&[0xf0, 0x48, 0x0f, 0xc7, 0x0d, 0x10, 0, 0, 0], AT, AT).unwrap();
    let ExecClass::Copy { rip_relative: Some(r) } = insn.class else { panic!() };
    assert_eq!(r.scratch, Some(Gpr::Rsi));
    let slot = prepare_slot(&insn, Addr(0x7f00_0000_0000), SlotEnding::JumpBack).unwrap();
    assert_eq!(&slot.code()[5..8], &[0x56, 0x48, 0xbe] /* push %rsi; movabs ..,%rsi */);
}

#[test]
fn rip_relative_push_cannot_use_a_far_slot() {
    let insn = analyze(&[0xff, 0x35, 0x10, 0, 0, 0 /* push 0x10(%rip) */], AT, AT).unwrap();
    assert!(matches!(
        prepare_slot(&insn, Addr(0x7f00_0000_0000), SlotEnding::JumpBack),
        Err(PrepareError::OutOfReach { .. })
    ));
    assert!(prepare_slot(&insn, Addr(0x50_0000), SlotEnding::JumpBack).is_ok());
}

#[test]
fn emulated_instructions_take_no_slot() {
    let insn = analyze(&[0x55], AT, AT).unwrap();
    assert_eq!(prepare_slot(&insn, Addr(0x50_0000), SlotEnding::JumpBack), Err(PrepareError::Emulated(AT)));
}

#[test]
fn fault_in_far_slot_maps_back_to_original_state() {
    mod_common::run();
}

#[path = "common/mod.rs"]
mod common;

mod mod_common {
    use super::common::FlatMemory;
    use super::*;
    pub fn run() {
        let insn = analyze(&[0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], AT, AT).unwrap();
        let slot = prepare_slot(&insn, Addr(0x7f00_0000_0000), SlotEnding::JumpBack).unwrap();
        let mut mem = FlatMemory::new(0x1000, 0x1000);
        // In the slot: rsp moved down by 128 + 8, the program's rcx saved at [rsp].
        let program_rsp = 0x1800;
        let rsp_in_slot = program_rsp - 128 - 8;
        mem.write_u64(Addr(rsp_in_slot), 0xdead_beef).unwrap();
        let mut regs = Regs { rip: slot.insn_addr().0, rsp: rsp_in_slot, rcx: AT.0 + 0x16, ..Regs::default() };
        slot.map_fault(&mut regs, &mut mem).unwrap();
        assert_eq!((regs.rip, regs.rsp, regs.rcx), (AT.0, program_rsp, 0xdead_beef));
    }
}
