//! The code writer: what it writes, decoded back with iced-x86.
use dprobe_arch::{
    call_through_code, jmp_rel32, move_rsp_code, ret_pop_code, syscall_code, trampoline_code, Addr, CodeWriter, Gpr,
};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

const AT: Addr = Addr(0x7000_0000_1000);

fn decode_all(bytes: &[u8], at: Addr) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, at.0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        assert!(!i.is_invalid(), "invalid code in {bytes:02x?}");
        out.push(i);
    }
    out
}

#[test]
fn each_verb_encodes_the_instruction_it_names() {
    let mut w = CodeWriter::new();
    w.move_rsp(-128);
    w.push(Gpr::R9);
    w.mov_imm64(Gpr::Rcx, 0x1234);
    w.pop(Gpr::R9);
    w.move_rsp(128);
    w.store(Addr(0x7000_0000_2008), Gpr::Rax);
    w.store32(Addr(0x7000_0000_2010), Gpr::Rdx);
    w.load(Gpr::Rdx, Addr(0x7000_0000_2018));
    w.store_imm32(Addr(0x7000_0000_2020), 1);
    w.store_imm32_on_stack(4, 0xdead_beef);
    w.rdtsc();
    w.syscall();
    w.int3();
    w.jmp_through(Addr(0x7000_0000_2000));
    let written = w.finish(AT).unwrap();
    let insns = decode_all(&written.bytes, AT);
    let codes: Vec<Code> = insns.iter().map(|i| i.code()).collect();
    assert_eq!(
        codes,
        [
            Code::Lea_r64_m,
            Code::Push_r64,
            Code::Mov_r64_imm64,
            Code::Pop_r64,
            Code::Lea_r64_m,
            Code::Mov_rm64_r64,
            Code::Mov_rm32_r32,
            Code::Mov_r64_rm64,
            Code::Mov_rm32_imm32,
            Code::Mov_rm32_imm32,
            Code::Rdtsc,
            Code::Syscall,
            Code::Int3,
            Code::Jmp_rm64,
        ]
    );
    assert_eq!((insns[0].memory_base(), insns[0].memory_displacement64() as i64), (Register::RSP, -128));
    assert_eq!(insns[1].op0_register(), Register::R9);
    assert_eq!((insns[2].op0_register(), insns[2].immediate64()), (Register::RCX, 0x1234));
    assert_eq!(insns[4].memory_displacement64(), 128);
    assert_eq!((insns[5].ip_rel_memory_address(), insns[5].op1_register()), (0x7000_0000_2008, Register::RAX));
    assert_eq!((insns[6].ip_rel_memory_address(), insns[6].op1_register()), (0x7000_0000_2010, Register::EDX));
    assert_eq!((insns[7].ip_rel_memory_address(), insns[7].op0_register()), (0x7000_0000_2018, Register::RDX));
    assert_eq!((insns[8].ip_rel_memory_address(), insns[8].immediate32()), (0x7000_0000_2020, 1));
    assert_eq!(
        (insns[9].memory_base(), insns[9].memory_displacement64(), insns[9].immediate32()),
        (Register::RSP, 4, 0xdead_beef)
    );
    assert_eq!(insns[13].ip_rel_memory_address(), 0x7000_0000_2000);
    // Offsets say where each instruction landed.
    let starts: Vec<u32> = insns.iter().map(|i| (i.ip() - AT.0) as u32).collect();
    assert_eq!(written.offsets, starts);
}

#[test]
fn a_jump_in_reach_is_relative_and_one_out_of_reach_goes_through_a_stored_pointer() {
    let mut w = CodeWriter::new();
    w.jmp(Addr(AT.0 + 0x1000_0000));
    let near = w.finish(AT).unwrap();
    let i = decode_all(&near.bytes, AT);
    assert_eq!((i[0].code(), i[0].near_branch_target()), (Code::Jmp_rel32_64, AT.0 + 0x1000_0000));

    let far = Addr(0x10_0000);
    let mut w = CodeWriter::new();
    w.jmp(far);
    let code = w.finish(AT).unwrap().bytes;
    let i = Decoder::with_ip(64, &code, AT.0, DecoderOptions::NONE).decode();
    assert_eq!(i.code(), Code::Jmp_rm64);
    let at = (i.ip_rel_memory_address() - AT.0) as usize;
    assert_eq!(&code[at..at + 8], &far.0.to_le_bytes());
}

#[test]
fn a_relocated_instruction_keeps_its_absolute_target() {
    // mov 0x100(%rip),%eax at 0x40_0000 reads 0x40_0106; lea to a branch target too.
    let original = Decoder::with_ip(64, &[0x8b, 0x05, 0x00, 0x01, 0, 0], 0x40_0000, DecoderOptions::NONE).decode();
    let jcc = Decoder::with_ip(64, &[0x74, 0x10], 0x40_0006, DecoderOptions::NONE).decode();
    let mut w = CodeWriter::new();
    w.relocate(original);
    w.relocate(jcc);
    let at = Addr(0x50_0000);
    let insns = decode_all(&w.finish(at).unwrap().bytes, at);
    assert_eq!(insns[0].ip_rel_memory_address(), 0x40_0106);
    assert_eq!(insns[0].op0_register(), Register::EAX);
    assert_eq!(insns[1].op0_kind(), OpKind::NearBranch64);
    assert_eq!(insns[1].near_branch_target(), 0x40_0018);
}

#[test]
fn a_rip_relative_operand_out_of_reach_is_an_error() {
    // (A target in the low 4 GiB would still be reached, through an address-size prefix.)
    let original = Decoder::with_ip(64, &[0x8b, 0x05, 0x00, 0x01, 0, 0], AT.0, DecoderOptions::NONE).decode();
    let mut w = CodeWriter::new();
    w.relocate(original);
    assert!(w.finish(Addr(0x10_0000)).is_err());
}

#[test]
fn copied_bytes_stay_as_they_were() {
    let bytes = [0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]; // a long nop with redundant prefixes
    let mut w = CodeWriter::new();
    w.copy_bytes(&bytes, Addr(0x40_0000));
    assert_eq!(w.finish(AT).unwrap().bytes, bytes);
}

#[test]
fn injected_code_is_one_syscall_or_one_int3() {
    let s = decode_all(&syscall_code(), AT);
    assert_eq!((s.len(), s[0].code()), (1, Code::Syscall));
    let t = decode_all(&trampoline_code(), AT);
    assert_eq!((t.len(), t[0].code()), (1, Code::Int3));
}

#[test]
fn a_jump_patch_is_always_five_bytes() {
    for to in [AT.offset(5), AT.offset(0x10), Addr(AT.0 - 0x7000_0000)] {
        let bytes = jmp_rel32(AT, to).unwrap();
        let i = Decoder::with_ip(64, &bytes, AT.0, DecoderOptions::NONE).decode();
        assert_eq!((i.code(), i.len(), i.near_branch_target()), (Code::Jmp_rel32_64, 5, to.0));
    }
    assert!(jmp_rel32(AT, Addr(0x10_0000)).is_err(), "out of rel32 reach");
}

#[test]
fn the_hand_encoded_pieces_are_what_the_encoder_makes() {
    for delta in [-136, 136, -0x1000, 0x7fff_0000] {
        let mut w = CodeWriter::new();
        w.move_rsp(delta);
        assert_eq!(move_rsp_code(delta).to_vec(), w.finish(AT).unwrap().bytes, "lea rsp, [rsp{delta:+}]");
    }
    // The short forms the encoder picks for small deltas read the same.
    let lea = decode_all(&move_rsp_code(-8), AT)[0];
    assert_eq!(
        (lea.code(), lea.memory_base(), lea.memory_displacement64() as i64),
        (Code::Lea_r64_m, Register::RSP, -8)
    );
    for through in [AT.offset(0x10), Addr(AT.0 - 0x7000_0000)] {
        let mut w = CodeWriter::new();
        w.call_through(through);
        assert_eq!(call_through_code(AT, through).unwrap().to_vec(), w.finish(AT).unwrap().bytes);
    }
    assert!(call_through_code(AT, Addr(0x10_0000)).is_err(), "out of rel32 reach");
    let mut w = CodeWriter::new();
    w.ret_pop(128);
    assert_eq!(ret_pop_code(128).to_vec(), w.finish(AT).unwrap().bytes);
}
