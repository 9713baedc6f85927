//! The window of an exit probe (a jump placed before a `ret`), and each refusal with its reason.
use dprobe_arch::*;

const F: Addr = Addr(0x40_1000);

/// push %rbp; push %rbx; sub $8,%rsp; mov %edi,%eax; add $8,%rsp; pop %rbx; pop %rbp; ret
const EPILOGUE: [u8; 15] = [0x55, 0x53, 0x48, 0x83, 0xec, 0x08, 0x89, 0xf8, 0x48, 0x83, 0xc4, 0x08, 0x5b, 0x5d, 0xc3];

fn spans(window: &[Insn]) -> Vec<(Addr, usize)> {
    window.iter().map(|i| (i.addr, i.len)).collect()
}

#[test]
fn the_window_is_the_shortest_run_of_instructions_ending_with_the_ret_that_covers_five_bytes() {
    let window = can_optimize_exit(&EPILOGUE, F, F.offset(14)).unwrap();
    assert_eq!(spans(&window), [(F.offset(8), 4), (F.offset(12), 1), (F.offset(13), 1), (F.offset(14), 1)]);
    // A `ret imm16` ends a window too.
    let mut code = EPILOGUE[..14].to_vec();
    code.extend([0xc2, 0x08, 0x00]);
    let window = can_optimize_exit(&code, F, F.offset(14)).unwrap();
    assert_eq!(spans(&window), [(F.offset(12), 1), (F.offset(13), 1), (F.offset(14), 3)]);
}

#[test]
fn a_tail_jump_ends_a_window_and_other_instructions_are_no_exit() {
    // push %rbx; mov %edi,%eax; pop %rbx; mov %eax,%edi; jmp F+0x100 (rel32: a tail call)
    let code = [0x53, 0x89, 0xf8, 0x5b, 0x89, 0xc7, 0xe9, 0xf5, 0x00, 0x00, 0x00];
    let window = can_optimize_exit(&code, F, F.offset(6)).unwrap();
    assert_eq!(spans(&window), [(F.offset(6), 5)], "a jmp rel32 covers five bytes itself");
    // The same with `jmp rel8` (to just past the function).
    let code = [0x53, 0x89, 0xf8, 0x5b, 0x89, 0xc7, 0xeb, 0x10];
    let window = can_optimize_exit(&code, F, F.offset(6)).unwrap();
    assert_eq!(spans(&window), [(F.offset(3), 1), (F.offset(4), 2), (F.offset(6), 2)]);
    match can_optimize_exit(&EPILOGUE, F, F.offset(13)) {
        Err(NotOptimized::NotAnExit { at, text }) => {
            assert_eq!(at, F.offset(13));
            assert!(text.to_string().contains("pop"), "{text}");
        }
        other => panic!("expected a refusal of a pop as an exit, got {other:?}"),
    }
}

#[test]
fn an_exit_with_fewer_than_five_bytes_before_it_is_refused() {
    // xor %eax,%eax; ret
    let code = [0x31, 0xc0, 0xc3];
    assert_eq!(
        can_optimize_exit(&code, F, F.offset(2)),
        Err(NotOptimized::ExitWindowTooShort { exit: F.offset(2), start: F })
    );
    // A ret alone.
    assert_eq!(can_optimize_exit(&[0xc3], F, F), Err(NotOptimized::ExitWindowTooShort { exit: F, start: F }));
    // Exactly five bytes from the start is enough: the window starts at the function.
    let code = [0x89, 0xf8, 0x5b, 0x5d, 0xc3];
    assert_eq!(spans(&can_optimize_exit(&code, F, F.offset(4)).unwrap())[0], (F, 2));
}

/// push %rbx; test %edi,%edi; je <rel8>; mov $1,%eax; pop %rbx; ret
fn branchy(target: u64) -> Vec<u8> {
    vec![0x53, 0x85, 0xff, 0x74, (target as i64 - 5) as u8, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x5b, 0xc3]
}

#[test]
fn a_branch_to_any_byte_of_the_window_after_its_first_is_refused_the_ret_included() {
    // The window is mov (+5), pop (+10), ret (+11).
    for target in [11, 10, 7] {
        assert_eq!(
            can_optimize_exit(&branchy(target), F, F.offset(11)),
            Err(NotOptimized::BranchIntoWindow {
                from: F.offset(3),
                text: format!("je 0x{:016X}", F.0 + target).into(),
                target: F.offset(target)
            }),
            "a je to +{target}"
        );
    }
    // A branch to the window's first byte lands on the jump itself: harmless.
    let window = can_optimize_exit(&branchy(5), F, F.offset(11)).unwrap();
    assert_eq!(spans(&window), [(F.offset(5), 5), (F.offset(10), 1), (F.offset(11), 1)]);
}

#[test]
fn an_instruction_before_the_exit_that_cannot_be_relocated_is_refused() {
    // call F+0x100; ret: the call would return into the replaced bytes.
    let code = [0xe8, 0xfb, 0x00, 0x00, 0x00, 0xc3];
    match can_optimize_exit(&code, F, F.offset(5)) {
        Err(NotOptimized::Relocate(RelocateError::CallNotLast { addr, .. })) => assert_eq!(addr, F),
        other => panic!("expected a call refused inside the window, got {other:?}"),
    }
    // mov $60,%eax; syscall; ret: a system call cannot be moved.
    let code = [0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3];
    match can_optimize_exit(&code, F, F.offset(7)) {
        Err(NotOptimized::Analyze(AnalyzeError::Unsupported { addr, reason: Unsupported::SystemCall, .. })) => {
            assert_eq!(addr, F.offset(5))
        }
        other => panic!("expected a syscall refused inside the window, got {other:?}"),
    }
    // xor %eax,%eax; ret; pop %rbx; ret: the window of the second ret holds the first.
    let code = [0x53, 0x31, 0xc0, 0xc3, 0x5b, 0xc3];
    assert!(matches!(
        can_optimize_exit(&code, F, F.offset(5)),
        Err(NotOptimized::Relocate(RelocateError::TransferNotLast { .. }))
    ));
}

#[test]
fn the_whole_function_is_checked_as_for_entry_windows() {
    assert_eq!(can_optimize_exit(&[], F, F), Err(NotOptimized::UnknownBounds { addr: F }));
    // A jump table (`notrack jmp *%rax`) before the epilogue.
    let mut code = EPILOGUE[..8].to_vec();
    code.extend([0x3e, 0xff, 0xe0]);
    code.extend(&EPILOGUE[8..]);
    assert!(matches!(can_optimize_exit(&code, F, F.offset(17)), Err(NotOptimized::IndirectJump { .. })));
    // An address inside an instruction is no exit.
    assert!(matches!(
        can_optimize_exit(&EPILOGUE, F, F.offset(3)),
        Err(NotOptimized::Analyze(AnalyzeError::NotInstructionBoundary { .. }))
    ));
    // Undecodable bytes after the exit still refuse it: the function's branches are unknown.
    let mut code = EPILOGUE.to_vec();
    code.push(0x06);
    assert_eq!(can_optimize_exit(&code, F, F.offset(14)), Err(NotOptimized::Undecodable { at: F.offset(15) }));
}

#[test]
fn the_exit_detour_runs_the_instructions_before_the_exit_then_the_stub_then_the_exit() {
    let site = F.offset(14);
    let window = can_optimize_exit(&EPILOGUE, F, site).unwrap();
    let at = Addr(0x40_0000);
    let detour = exit_detour_code(site, &window, at, Addr(0x7000_0000)).unwrap();
    assert_eq!((detour.site, detour.jump_from), (site, F.offset(8)));
    // The relocated exit is the whole window of the entry layout: the stub returns into it.
    assert_eq!(detour.window.addr, at.offset(DETOUR_WINDOW));
    assert_eq!(detour.window.code, [0xc3]);
    // The jump leads to the copy of the instructions before the exit, after the relocated exit.
    let prefix = detour.prefix.as_ref().unwrap();
    assert_eq!(prefix.addr, at.offset(DETOUR_WINDOW + 1));
    assert_eq!(detour.target(), prefix.addr);
    let jump = detour.jump();
    assert_eq!(jump[0], 0xe9);
    let rel = i32::from_le_bytes(jump[1..].try_into().unwrap()) as i64;
    assert_eq!(F.offset(8 + 5).0.wrapping_add(rel as u64), prefix.addr.0);
    // The copy: add, pop, pop, then a jump to the entry.
    assert_eq!(&prefix.code[..6], &EPILOGUE[8..14]);
    assert_eq!(describe(&prefix.code[6..], prefix.addr.offset(6)), format!("jmp 0x{:016X}", detour.entry().0));
    assert_eq!(&detour.code[(prefix.addr.0 - at.0) as usize..], &prefix.code[..]);
    // Threads stopped in the window: before the exit, at their copies; at the exit, at the
    // entry (the exit's handlers have not run yet).
    assert_eq!(detour.copy_of(F.offset(8)), Some(prefix.addr));
    assert_eq!(detour.copy_of(F.offset(13)), Some(prefix.addr.offset(5)));
    assert_eq!(detour.copy_of(site), Some(detour.entry()));
    assert_eq!(detour.copy_of(F.offset(9)), None);
    // A window of the exit alone (a jmp rel32) is an entry-like detour.
    let code = [0x53, 0x89, 0xf8, 0x5b, 0x89, 0xc7, 0xe9, 0xf5, 0x00, 0x00, 0x00];
    let window = can_optimize_exit(&code, F, F.offset(6)).unwrap();
    let detour = exit_detour_code(F.offset(6), &window, at, Addr(0x7000_0000)).unwrap();
    assert_eq!((detour.prefix.is_none(), detour.jump_from, detour.target()), (true, F.offset(6), detour.entry()));
}

#[test]
fn every_exit_refusal_reads_as_a_sentence() {
    let short = NotOptimized::ExitWindowTooShort { exit: F.offset(2), start: F }.to_string();
    assert!(short.contains("fewer than 5 bytes"), "{short}");
    let not = NotOptimized::NotAnExit { at: F, text: "pop %rbx".into() }.to_string();
    assert!(not.contains("`pop %rbx`") && not.contains("not a return"), "{not}");
}
