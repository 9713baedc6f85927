//! Can a probe on a function's exit be jump-optimized? The exit window: the instructions that
//! end with the exit and cover the [`JUMP_LEN`] bytes of a jump placed *before* it.
//!
//! A return probe watches a function leave at each `ret` (and each tail-call jump). A `ret`
//! is one byte, with no room for a `jmp rel32`; the jump goes instead where the instructions
//! leading to the exit start (`pop %rbx; pop %rbp; pop %r12; ret` is 5 bytes). Its detour runs
//! the relocated instructions before the exit, then the exit's handlers with the registers
//! exactly as at the exit, then the exit itself. That is correct under the entry window's
//! conditions ([`crate::can_optimize`]), shifted:
//!
//! * the function's bounds are known and the whole function decodes, with no indirect jump and
//!   no foreign `int3` (the same check of the decoded [`FunctionCode`] as entry windows);
//! * the exit is a `ret` or a direct `jmp` (a tail call), and the instructions before it in the
//!   window are relocatable and fall into it (no call, jump or return among them:
//!   [`crate::relocate`] refuses those);
//! * no direct branch of the function targets any byte of the window after its first: not
//!   only the jump's bytes +1..+4, but the exit too (a branch to the exit would run the
//!   original `ret` and miss the handlers);
//! * the window starts inside the function: an exit with fewer than five bytes of
//!   instructions before it from the function's start is refused
//!   ([`NotOptimized::ExitWindowTooShort`]).
//!
//! The probe stays at the exit's address (handlers see `rip` there); only the jump starts
//! earlier, at the window's first instruction.

use crate::optimize::FunctionCode;
use crate::{analyze, Addr, AnalyzeError, Emulation, ExecClass, Insn, NotOptimized, JUMP_LEN};

/// Decide whether the exit probe at `exit` can be jump-optimized; on success, the exit window:
/// consecutive instructions covering at least [`JUMP_LEN`] bytes and ending with the exit,
/// whose first is where the jump goes.
///
/// `function` holds the original bytes of the whole function (never a probe's patch), from its
/// first instruction at `start`; an empty slice means its bounds are unknown.
pub fn can_optimize_exit(function: &[u8], start: Addr, exit: Addr) -> Result<Vec<Insn>, NotOptimized> {
    FunctionCode::decode(function.to_vec(), start).can_optimize_exit(exit)
}

/// The window of the exit at `exit`: its first instruction and length, from the shortest run
/// of whole instructions that ends with the exit and covers [`JUMP_LEN`] bytes.
pub(crate) fn exit_window_span(function: &[u8], start: Addr, exit: Addr) -> Result<(Addr, usize), NotOptimized> {
    // Checks that `exit` starts an instruction of the function, which decodes up to it.
    let last = analyze(function, start, exit)?;
    match last.class {
        ExecClass::Emulate { emulation: Emulation::Ret { .. } | Emulation::Jmp { .. }, .. } => {}
        _ => return Err(NotOptimized::NotAnExit { at: exit, text: last.text_when_shown() }),
    }
    let window_start = window_start(function, start, exit, last.len)?;
    Ok((window_start, (last.next().0 - window_start.0) as usize))
}

/// The start of the shortest run of whole instructions that ends with the exit (at `exit`,
/// `exit_len` bytes long) and covers [`JUMP_LEN`] bytes.
fn window_start(function: &[u8], start: Addr, exit: Addr, exit_len: usize) -> Result<Addr, NotOptimized> {
    let end = exit.offset(exit_len as u64);
    if exit_len >= JUMP_LEN {
        return Ok(exit);
    }
    // The instruction starts before the exit, the last JUMP_LEN of them (each at least a byte).
    let mut starts = [None::<Addr>; JUMP_LEN];
    let mut at = start;
    let mut k = 0;
    while at < exit {
        starts[k % JUMP_LEN] = Some(at);
        k += 1;
        let rest = &function[(at.0 - start.0) as usize..];
        let len = crate::decode_len(rest).ok_or(NotOptimized::Analyze(AnalyzeError::UndecodableBefore {
            addr: exit,
            start,
            at,
        }))?;
        at = at.offset(len as u64);
    }
    (0..k.min(JUMP_LEN))
        .map(|back| starts[(k - 1 - back) % JUMP_LEN].expect("recorded above"))
        .find(|s| end.0 - s.0 >= JUMP_LEN as u64)
        .ok_or(NotOptimized::ExitWindowTooShort { exit, start })
}
