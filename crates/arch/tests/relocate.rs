//! Relocating a run of instructions: what the copy does, and every refusal with its reason.
use dprobe_arch::*;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

const AT: Addr = Addr(0x40_1000);
const COPY: Addr = Addr(0x50_0000);

/// The run of analyzed instructions that `code` at `AT` consists of.
fn run(code: &[u8]) -> Vec<Insn> {
    analyze_run(code, AT, AT, code.len()).unwrap()
}

fn decode_all(bytes: &[u8], at: Addr) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, at.0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

#[test]
fn the_window_of_a_jump_is_the_instructions_covering_five_bytes() {
    // push %rbp; mov %rsp,%rbp; push %r15; ret
    let code = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0xc3];
    let window = analyze_run(&code, AT, AT, 5).unwrap();
    assert_eq!(window.iter().map(|i| i.len).collect::<Vec<_>>(), [1, 3, 2]);
    // Truncated code: the error analysis gives.
    assert!(matches!(analyze_run(&code[..5], AT, AT, 5), Err(AnalyzeError::Truncated { .. })));
}

#[test]
fn a_run_is_copied_and_jumps_back_after_itself() {
    // push %rbp; mov %rsp,%rbp; mov 0x10(%rip),%eax
    let code = [0x55, 0x48, 0x89, 0xe5, 0x8b, 0x05, 0x10, 0, 0, 0];
    let r = relocate(&run(&code), COPY).unwrap();
    let insns = decode_all(&r.code, COPY);
    assert_eq!(&r.code[..4], &code[..4], "copied byte for byte");
    assert_eq!(insns[2].code(), Code::Mov_r32_rm32);
    assert_eq!(insns[2].ip_rel_memory_address(), AT.0 + 10 + 0x10, "the operand still reads the same place");
    assert_eq!((insns[3].code(), insns[3].near_branch_target()), (Code::Jmp_rel32_64, AT.0 + 10));
    assert_eq!(r.original_end, AT.offset(10));
    assert_eq!(r.map, [(AT, COPY), (AT.offset(1), COPY.offset(1)), (AT.offset(4), COPY.offset(4))]);
    assert_eq!(r.copy_of(AT.offset(4)), Some(COPY.offset(4)));
    assert_eq!(r.original_of(COPY.offset(1)), Some(AT.offset(1)));
    assert_eq!(r.original_of(COPY.offset(2)), None);
    assert!(r.contains(COPY.offset(4)) && !r.contains(COPY.offset(r.code.len() as u64)));
}

/// A run that does not depend on its address is copied as it is, without the block encoder:
/// the same bytes the encoder lays out, with the same map.
#[test]
fn a_run_that_does_not_depend_on_its_address_is_what_the_encoder_makes() {
    let runs: [&[u8]; 4] = [
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],             // nopl 0x0(%rax,%rax,1)
        &[0x55, 0x48, 0x89, 0xe5, 0x41, 0x57],       // push %rbp; mov %rsp,%rbp; push %r15
        &[0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x07], // mov %rdi,%rax; add $7,%rax
        &[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x54],       // endbr64; push %r12
    ];
    for code in runs {
        let insns = run(code);
        let quick = relocate(&insns, COPY).unwrap();
        // What the encoder lays out for the same run.
        let mut w = CodeWriter::new();
        for i in &insns {
            w.copy_bytes(i.code(), i.addr);
        }
        w.jmp(AT.offset(code.len() as u64));
        let encoded = w.finish(COPY).unwrap();
        assert_eq!(quick.code, encoded.bytes, "{code:02x?}");
        let map: Vec<(Addr, Addr)> =
            insns.iter().zip(&encoded.offsets).map(|(i, o)| (i.addr, COPY.offset(u64::from(*o)))).collect();
        assert_eq!(quick.map, map);
        assert_eq!(quick.after_first, COPY.offset(insns[0].len as u64));
        assert_eq!(&quick.code[..code.len()], code);
        let back = decode_all(&quick.code[code.len()..], COPY.offset(code.len() as u64));
        assert_eq!((back[0].code(), back[0].near_branch_target()), (Code::Jmp_rel32_64, AT.0 + code.len() as u64));
    }
}

#[test]
fn a_branch_to_an_instruction_of_the_run_goes_to_its_copy_and_others_keep_their_target() {
    // mov %rsp,%rbp; je AT (back to the first); jne AT+0x40
    let code = [0x48, 0x89, 0xe5, 0x74, 0xfb, 0x75, 0x39];
    let r = relocate(&run(&code), COPY).unwrap();
    let insns = decode_all(&r.code, COPY);
    assert_eq!(insns[1].near_branch_target(), COPY.0);
    assert_eq!(insns[2].near_branch_target(), AT.0 + 0x40);
}

#[test]
fn a_call_ending_the_run_pushes_the_original_return_address() {
    // mov %rsp,%rbp; call AT+0x100
    let code = [0x48, 0x89, 0xe5, 0xe8, 0xf8, 0x00, 0x00, 0x00];
    let r = relocate(&run(&code), Addr(0x7f12_3456_7000)).unwrap();
    let insns = decode_all(&r.code, r.addr);
    let ret = AT.0 + 8;
    assert_eq!(insns[1].code(), Code::Lea_r64_m);
    assert_eq!((insns[1].memory_base(), insns[1].memory_displacement64() as i64), (Register::RSP, -8));
    assert_eq!((insns[2].memory_displacement64(), insns[2].immediate32()), (0, ret as u32));
    assert_eq!((insns[3].memory_displacement64(), insns[3].immediate32()), (4, (ret >> 32) as u32));
    // Out of rel32 reach: through a stored pointer, to the same target.
    assert_eq!(insns[4].code(), Code::Jmp_rm64);
    let at = (insns[4].ip_rel_memory_address() - r.addr.0) as usize;
    assert_eq!(&r.code[at..at + 8], &(AT.0 + 0x100).to_le_bytes());
    assert_eq!(r.copy_of(AT.offset(3)), Some(Addr(insns[1].ip())));
}

#[test]
fn an_indirect_call_ending_the_run_jumps_through_the_same_operand() {
    // mov %rsp,%rbp; call *0x10(%rip)
    let code = [0x48, 0x89, 0xe5, 0xff, 0x15, 0x10, 0, 0, 0];
    let r = relocate(&run(&code), COPY).unwrap();
    let insns = decode_all(&r.code, COPY);
    let last = insns.iter().rfind(|i| i.code() != Code::INVALID).unwrap();
    assert_eq!((last.code(), last.ip_rel_memory_address()), (Code::Jmp_rm64, AT.0 + 9 + 0x10));
}

#[test]
fn runs_that_cannot_keep_their_meaning_are_refused_with_the_reason() {
    let refused = |code: &[u8], at: Addr| relocate(&run(code), at).unwrap_err();
    assert_eq!(relocate(&[], COPY), Err(RelocateError::Empty));
    // push %rbp, then the push two bytes on.
    let apart = vec![run(&[0x55])[0].clone(), analyze(&[0x55, 0x90, 0x55], AT, AT.offset(2)).unwrap()];
    assert_eq!(
        relocate(&apart, COPY),
        Err(RelocateError::NotConsecutive { expected: AT.offset(1), next: AT.offset(2) })
    );
    // call rel32; push %rbp: the callee would return into the replaced bytes.
    assert!(matches!(refused(&[0xe8, 0, 0, 0, 0, 0x55], COPY), RelocateError::CallNotLast { addr: AT, .. }));
    // ret; push %rbp  and  jmp *%rax; nop
    assert!(matches!(refused(&[0xc3, 0x55], COPY), RelocateError::TransferNotLast { addr: AT, .. }));
    assert!(matches!(refused(&[0xff, 0xe0, 0x90], COPY), RelocateError::TransferNotLast { addr: AT, .. }));
    // push %rbp; call *8(%rsp): the rewritten call moves the stack pointer first.
    assert!(matches!(
        refused(&[0x55, 0xff, 0x54, 0x24, 0x08], COPY),
        RelocateError::StackRelativeCall { addr, .. } if addr == AT.offset(1)
    ));
    // je AT+3, into the middle of the mov after it.
    assert_eq!(
        refused(&[0x74, 0x01, 0x48, 0x89, 0xe5], COPY),
        RelocateError::BranchIntoInstruction { addr: AT, target: AT.offset(3) }
    );
    // mov 0x10(%rip),%eax copied 128 TiB away.
    assert_eq!(
        refused(&[0x55, 0x8b, 0x05, 0x10, 0, 0, 0], Addr(0x7f00_0000_0000)),
        RelocateError::OutOfReach { addr: AT.offset(1), target: AT.offset(7 + 0x10), copy: Addr(0x7f00_0000_0000) }
    );
}
