//! When a probe can be jump-optimized, and each refusal with its reason.
use dprobe_arch::*;

const F: Addr = Addr(0x40_1000);

/// push %rbp; mov %rsp,%rbp; sub $0x10,%rsp; xor %eax,%eax; leave; ret
const PROLOGUE: [u8; 13] = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x31, 0xc0, 0xc9, 0xc3, 0x90];

#[test]
fn a_plain_prologue_is_optimized_with_the_instructions_covering_five_bytes() {
    let window = can_optimize(&PROLOGUE, F, F).unwrap();
    assert_eq!(
        window.iter().map(|i| (i.addr, i.len)).collect::<Vec<_>>(),
        [(F, 1), (F.offset(1), 3), (F.offset(4), 4)]
    );
}

#[test]
fn a_branch_into_bytes_one_to_four_of_the_window_is_refused() {
    // The prologue, then `jne F+4` (back into the window) before the epilogue.
    let mut code = PROLOGUE[..10].to_vec();
    code.extend([0x75, (4i8 - 12) as u8, 0xc9, 0xc3]);
    assert_eq!(
        can_optimize(&code, F, F),
        Err(NotOptimized::BranchIntoWindow {
            from: F.offset(10),
            text: "jne 0x0000000000401004".into(),
            target: F.offset(4)
        })
    );
    // A branch to byte 0 is a branch to the jump itself: harmless.
    code[11] = (0i8 - 12) as u8;
    assert!(can_optimize(&code, F, F).is_ok());
    // Probed at +8, the jne (back to +8) is in the window itself and goes to its copy.
    code[11] = (8i8 - 12) as u8;
    assert!(can_optimize(&code, F, F.offset(8)).is_ok());
}

#[test]
fn a_jump_table_in_the_function_is_refused() {
    // The prologue, then `notrack jmp *%rax` (a switch's jump table), then the epilogue.
    let mut code = PROLOGUE[..10].to_vec();
    code.extend([0x3e, 0xff, 0xe0, 0xc9, 0xc3]);
    match can_optimize(&code, F, F) {
        Err(NotOptimized::IndirectJump { at, text }) => {
            assert_eq!(at, F.offset(10));
            assert!(text.to_string().contains("jmp"), "{text}");
        }
        other => panic!("expected an indirect jump refusal, got {other:?}"),
    }
}

#[test]
fn a_function_too_short_for_five_bytes_is_refused() {
    // xor %eax,%eax; ret
    let code = [0x31, 0xc0, 0xc3];
    assert_eq!(can_optimize(&code, F, F), Err(NotOptimized::CrossesFunctionEnd { addr: F, end: F.offset(3) }));
    // Near the end of a longer function.
    assert_eq!(
        can_optimize(&PROLOGUE, F, F.offset(10)),
        Err(NotOptimized::CrossesFunctionEnd { addr: F.offset(10), end: F.offset(13) })
    );
}

#[test]
fn a_window_whose_last_instruction_crosses_the_end_is_refused() {
    // nop; nop; nop; nop; mov $1,%eax (5 bytes) but the function is 6 bytes long: the window
    // from +0 covers 5 bytes and ends inside the mov, past the end.
    let code = [0x90, 0x90, 0x90, 0x90, 0xb8, 0x01];
    assert!(matches!(can_optimize(&code, F, F), Err(NotOptimized::Analyze(AnalyzeError::Truncated { .. }))));
}

#[test]
fn unknown_bounds_undecodable_code_and_foreign_breakpoints_are_refused() {
    assert_eq!(can_optimize(&[], F, F), Err(NotOptimized::UnknownBounds { addr: F }));
    let mut code = PROLOGUE.to_vec();
    code[11] = 0x06; // invalid in 64-bit mode
    assert_eq!(can_optimize(&code, F, F), Err(NotOptimized::Undecodable { at: F.offset(11) }));
    code[11] = 0xcc;
    assert_eq!(can_optimize(&code, F, F), Err(NotOptimized::ForeignBreakpoint { at: F.offset(11) }));
}

#[test]
fn a_window_that_cannot_be_relocated_is_refused_with_the_relocation_reason() {
    // call F+0x100 (5 bytes) is fine when it ends the window ...
    let mut code = vec![0xe8, 0xfb, 0x00, 0x00, 0x00, 0xc3];
    code.resize(0x200, 0x90);
    assert!(can_optimize(&code, F, F).is_ok());
    // ... but `xor %eax,%eax; call ...` puts a call before the end of the window: its return
    // address would be inside the replaced bytes.
    let mut code = vec![0x31, 0xc0, 0xe8, 0xfb, 0x00, 0x00, 0x00, 0x90, 0xc3];
    code.resize(0x200, 0x90);
    assert!(matches!(can_optimize(&code, F, F), Ok(w) if w.len() == 2), "a call ending the window is allowed");
    let code = [0x31, 0xc0, 0xc3, 0x90, 0x90, 0x90, 0xc3];
    assert!(matches!(can_optimize(&code, F, F), Err(NotOptimized::Relocate(RelocateError::TransferNotLast { .. }))));
    // An instruction that cannot be probed at all.
    let code = [0x0f, 0x05, 0x90, 0x90, 0x90, 0xc3];
    assert!(matches!(can_optimize(&code, F, F), Err(NotOptimized::Analyze(AnalyzeError::Unsupported { .. }))));
}

#[test]
fn every_refusal_reads_as_a_sentence() {
    let code = [0x31, 0xc0, 0xc3];
    let why = can_optimize(&code, F, F).unwrap_err().to_string();
    assert!(why.contains("cross the function's end"), "{why}");
}

#[test]
fn a_detour_skips_the_red_zone_calls_the_stub_and_runs_the_window_then_jumps_back() {
    // lea 0x1000(%rdi,%rsi),%rax; ret
    let code = [0x48, 0x8d, 0x84, 0x37, 0x00, 0x10, 0x00, 0x00, 0xc3];
    let window = can_optimize(&code, F, F).unwrap();
    let at = Addr(0x40_8000);
    let stub = Addr(0x7f00_0000_1000);
    let d = detour_code(F, &window, at, stub).unwrap();
    assert_eq!(d.code[..8], F.0.to_le_bytes(), "the probe address, for the dispatcher");
    assert_eq!(d.code[8..16], stub.0.to_le_bytes(), "the stub, called through memory");
    assert_eq!(d.code[16..19], [0xc2, 0x80, 0x00], "redirect: ret $128");
    let texts: Vec<String> = {
        let mut out = Vec::new();
        let mut off = DETOUR_ENTRY as usize;
        while off < d.code.len() {
            let len = decode_len(&d.code[off..]).unwrap();
            out.push(describe(&d.code[off..off + len], at.offset(off as u64)));
            off += len;
        }
        out
    };
    assert_eq!(texts[0], "lea -0x88(%rsp),%rsp");
    assert_eq!(texts[1], format!("callq *{:#x}", at.0 + 8), "through the stored stub address");
    assert_eq!(texts[2], "lea 0x88(%rsp),%rsp");
    assert_eq!(texts[3], "lea 0x1000(%rdi,%rsi),%rax");
    assert_eq!(texts[4], format!("jmp {:#018x}", F.0 + 8), "back after the window");
    assert_eq!(d.window.addr, at.offset(DETOUR_WINDOW));
    let rel = (d.entry().0 as i64 - (F.0 as i64 + 5)) as i32;
    assert_eq!(d.jump()[0], 0xe9);
    assert_eq!(d.jump()[1..], rel.to_le_bytes());
    // A detour out of a jump's reach is refused.
    assert!(matches!(detour_code(F, &window, Addr(0x7f00_0000_0000), stub), Err(NotOptimized::NoDetourPage { .. })));
}

#[test]
fn inside_a_function_on_an_avx_cpu_the_detour_keeps_the_whole_extended_state() {
    let (start, inside) = (Addr(0x1000), Addr(0x1008));
    assert_eq!(vector_state(start, start, 0, true), VectorState::Xmm);
    assert_eq!(vector_state(start.offset(4), start, 4, true), VectorState::Xmm, "after an endbr64: still the entry");
    assert_eq!(vector_state(inside, start, 0, false), VectorState::Xmm);
    assert_eq!(vector_state(inside, start, 0, true), VectorState::Full);
    assert_eq!(vector_state(start.offset(4), start, 0, true), VectorState::Full);
}

#[test]
fn a_detour_with_post_handlers_calls_them_after_the_probed_instruction_and_a_branch_first_is_refused() {
    // lea 0x1000(%rdi,%rsi),%rax; ret
    let code = [0x48, 0x8d, 0x84, 0x37, 0x00, 0x10, 0x00, 0x00, 0xc3];
    let window = can_optimize(&code, F, F).unwrap();
    let at = Addr(0x40_8000);
    let (stub, post) = (Addr(0x7f00_0000_1000), Addr(0x7f00_0000_2000));
    let d = detour_code_with_post(F, &window, at, stub, post).unwrap();
    assert_eq!(d.code[DETOUR_POST_STUB as usize..][..8], post.0.to_le_bytes(), "the post stub's address");
    let w = DETOUR_WINDOW as usize;
    assert_eq!(d.code[w..w + 8], code[..8], "the probed instruction first");
    assert_eq!(d.code[w + 8..w + 10], [0xeb, 16], "then a jump over the post block's two words");
    let call = w + 10 + 16 + 8;
    assert_eq!(describe(&d.code[w + 26..], at.offset(w as u64 + 26)), "lea -0x88(%rsp),%rsp");
    assert_eq!(describe(&d.code[call..], at.offset(call as u64)), format!("callq *{:#x}", at.0 + DETOUR_POST_STUB));
    let ret = call + 6;
    assert_eq!(d.code[ret - POST_DETOUR_BACK as usize..][..8], at.0.to_le_bytes(), "the detour, for the stub");
    assert_eq!(d.code[ret - POST_NEXT_BACK as usize..][..8], (F.0 + 8).to_le_bytes(), "RIP after the instruction");
    assert_eq!(describe(&d.code[ret..], at.offset(ret as u64)), "lea 0x88(%rsp),%rsp");
    assert_eq!(describe(&d.code[ret + 8..], at.offset(ret as u64 + 8)), format!("jmp {:#018x}", F.0 + 8));
    assert_eq!(d.window.map, [(F, at.offset(w as u64))]);
    // The plain detour has no post stub.
    assert_eq!(detour_code(F, &window, at, stub).unwrap().code[DETOUR_POST_STUB as usize..][..8], [0; 8]);
    // jmp +0 (to the ret after it): a post block after it would never run.
    let branch = [0xe9, 0, 0, 0, 0, 0xc3];
    let window = can_optimize(&branch, F, F).unwrap();
    assert_eq!(post_fits(&window), Err(NotOptimized::PostHandler));
    assert_eq!(detour_code_with_post(F, &window, at, stub, post), Err(NotOptimized::PostHandler));
}
