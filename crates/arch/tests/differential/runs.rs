//! Differential execution of runs: the 2-4 consecutive instructions a jump-optimized probe
//! displaces, harvested from the same compiler output as the forms, each executed in place and
//! from its relocated copy ([`dprobe_arch::relocate`]) from the same state, and compared:
//! every general register, the flags, RIP after (a fault in the copy mapped back to its
//! original instruction), xmm0-15, and the memory it could touch. Each run is also executed
//! through a whole detour ([`dprobe_arch::detour_code`]: the red-zone skip, the call to an
//! engine's stub, here one that only returns, then the relocated run), as a jump-optimized
//! probe runs it.

use std::collections::BTreeMap;

use dprobe_arch::{analyze_run, detour_code, relocate, Addr, AnalyzeError, Detour, Insn, RelocateError, Relocated};

std::arch::global_asm!(
    ".text",
    // The detour's stub, with nothing to dispatch: every register and flag as they were.
    ".globl dx_detour_stub",
    "dx_detour_stub:",
    "ret",
);

extern "C" {
    fn dx_detour_stub();
}

/// Where the detour's call to its stub stores its return address (below the red zone: free
/// stack by the ABI), and that address.
fn stub_return_slot(ctx: &Ctx, arena: &Arena) -> (u64, [u8; 8]) {
    let below = ctx.gpr[4].wrapping_sub(dprobe_arch::DETOUR_STACK_SKIP + 8);
    (below, Addr(arena.near).offset(dprobe_arch::DETOUR_RETURN).0.to_le_bytes())
}

/// The run in place, from a stack that already holds what the detour's call stores below the
/// red zone: the state a run through the detour starts from.
fn run_in_place_after_call(arena: &Arena, ctx: &Ctx, code: &[u8]) -> Option<(Result_, Vec<u8>)> {
    let (below, ret) = stub_return_slot(ctx, arena);
    if !arena.contains(below, 8) {
        return None;
    }
    arena.reset();
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    bytes_at(below, 8).copy_from_slice(&ret);
    let o = harness::run(ctx, arena.insn_addr());
    Some((finish(arena, o), code_outside(arena, code.len())))
}

/// The run executed through its detour at the near slot page, from the same state.
fn run_through_detour(arena: &Arena, ctx: &Ctx, insns: &[Insn], code: &[u8]) -> Option<(Result_, Vec<u8>)> {
    let stub = Addr(dx_detour_stub as *const () as u64);
    let detour: Detour = detour_code(Addr(arena.insn_addr()), insns, Addr(arena.near), stub).ok()?;
    arena.reset();
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    bytes_at(detour.addr.0, detour.code.len()).copy_from_slice(&detour.code);
    let mut o = harness::run(ctx, detour.entry().0);
    map_back(&mut o, |a| detour.window.original_of(a));
    Some((finish(arena, o), code_outside(arena, code.len())))
}

use crate::harness::{self, Ctx};
use crate::{bytes_at, describe_diff, finish, forms, hex, Arena, Result_, PAGE};

/// Where a run stopped in a copy, and the address it faulted on there, as the original
/// instructions' addresses: a fault inside the copy is reported at the original instruction,
/// as the engine reports it.
pub(crate) fn map_back(o: &mut harness::Outcome, original_of: impl Fn(Addr) -> Option<Addr>) {
    if let Some(original) = original_of(Addr(o.regs.rip)) {
        o.regs.rip = original.0;
    }
    if let Some(original) = original_of(Addr(o.fault_addr)) {
        o.fault_addr = original.0;
    }
}

/// The code pages, but for the run itself (which only the in-place execution has there).
pub(crate) fn code_outside(arena: &Arena, run_len: usize) -> Vec<u8> {
    let mut code = bytes_at(arena.code, 4 * PAGE).to_vec();
    let at = (arena.insn_addr() - arena.code) as usize;
    code[at..at + run_len].fill(0);
    code
}

fn run_in_place(arena: &Arena, ctx: &Ctx, code: &[u8], copy: &Relocated) -> (Result_, Vec<u8>) {
    arena.reset();
    // Both executions see the original and the copy in memory (see `run_relocated`).
    bytes_at(copy.addr.0, copy.code.len()).copy_from_slice(&copy.code);
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    let o = harness::run(ctx, arena.insn_addr());
    (finish(arena, o), code_outside(arena, code.len()))
}

fn run_relocated(arena: &Arena, ctx: &Ctx, copy: &Relocated, code: &[u8]) -> (Result_, Vec<u8>) {
    arena.reset();
    // The original bytes stay where they were, as in a probed process: a run whose memory
    // operand happens to point there (registers are random) reads the same data both ways.
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    bytes_at(copy.addr.0, copy.code.len()).copy_from_slice(&copy.code);
    let mut o = harness::run(ctx, copy.addr.0);
    map_back(&mut o, |a| copy.original_of(a));
    (finish(arena, o), code_outside(arena, code.len()))
}

fn refusal(e: &RelocateError) -> &'static str {
    match e {
        RelocateError::Empty => "empty",
        RelocateError::NotConsecutive { .. } => "not consecutive",
        RelocateError::CallNotLast { .. } => "a call before the end",
        RelocateError::TransferNotLast { .. } => "a jump or return before the end",
        RelocateError::StackRelativeCall { .. } => "a call through the stack pointer",
        RelocateError::BranchIntoInstruction { .. } => "a branch into an instruction",
        RelocateError::OutOfReach { .. } => "RIP-relative target out of reach",
        RelocateError::Encode(_) => "encoder refused",
    }
}

#[test]
fn differential_execution_of_harvested_runs() {
    let (_alone, arena) = crate::harness_alone();
    let catalog = crate::catalog();
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");

    let mut executed: BTreeMap<usize, usize> = BTreeMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_runnable: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut detoured = 0usize;

    for run in &catalog.runs {
        let at = arena.insn_addr();
        let Some(prepared) = forms::normalize_run(run, at, &arena) else {
            *not_runnable.entry("cannot be re-encoded at the test address").or_default() += 1;
            continue;
        };
        if let Some(why) = prepared.not_runnable {
            *not_runnable.entry(why).or_default() += 1;
            continue;
        }
        let code = &prepared.bytes;
        let insns = match analyze_run(code, Addr(at), Addr(at), code.len()) {
            Ok(i) => i,
            Err(AnalyzeError::Unsupported { reason, .. }) => {
                *refused.entry(format!("probe refused: {reason:?}")).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{}: {e}", run.text),
        };
        assert_eq!(insns.len(), run.insns.len(), "{}", run.text);
        let copy = match relocate(&insns, Addr(arena.near)) {
            Ok(c) => c,
            Err(e) => {
                *refused.entry(refusal(&e).to_owned()).or_default() += 1;
                continue;
            }
        };
        let mut ctx = prepared.ctx;
        ctx.avx512 = u64::from(avx512);
        let (original, original_code) = run_in_place(&arena, &ctx, code, &copy);
        if original.signal == harness::RUNAWAY {
            *not_runnable.entry("loops in place (a branch back, random registers)").or_default() += 1;
            continue;
        }
        // A memory operand built from random registers can land on memory that changes from
        // one execution to the next (the harness's own): such a run cannot be compared.
        let (again, again_code) = run_in_place(&arena, &ctx, code, &copy);
        if again != original || again_code != original_code {
            *not_runnable.entry("reads memory that changes between runs").or_default() += 1;
            continue;
        }
        let (moved, moved_code) = run_relocated(&arena, &ctx, &copy, code);
        if moved != original || moved_code != original_code {
            let mut diff = describe_diff(&original, &moved);
            if moved_code != original_code {
                diff.push_str(", code-page memory differs");
            }
            mismatches.push(format!("{} [{}] ({}): {diff}", run.text, hex(code), run.source));
        }
        *executed.entry(insns.len()).or_default() += 1;
        let expected = run_in_place_after_call(&arena, &ctx, code);
        match run_through_detour(&arena, &ctx, &insns, code).zip(expected) {
            Some(((through, through_code), (original, original_code)))
                if through != original || through_code != original_code =>
            {
                let mut diff = describe_diff(&original, &through);
                if through_code != original_code {
                    diff.push_str(", code-page memory differs");
                }
                mismatches.push(format!("{} [{}] ({}) through a detour: {diff}", run.text, hex(code), run.source));
            }
            Some(_) => detoured += 1,
            None => *not_runnable.entry("no detour at the test's slot page").or_default() += 1,
        }
    }

    let total: usize = executed.values().sum();
    let refused_total: usize = refused.values().sum();
    println!("differential execution: {} distinct runs of 2-4 instructions harvested", catalog.runs.len());
    println!(
        "differential execution: {total} runs executed in place and relocated (by length {executed:?}), \
         {refused_total} refused {refused:?}"
    );
    println!("differential execution: {detoured} runs executed through a whole detour, same results");
    println!("differential execution: runs not runnable in this harness: {not_runnable:?}");
    crate::report_mismatches(&mismatches, "runs behave differently relocated");
    assert!(total >= 500, "only {total} runs executed");
    assert!(detoured >= 500, "only {detoured} runs executed through a detour");
}
