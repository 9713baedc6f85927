//! Differential execution of exit windows: every harvested run that ends with an exit (a
//! `ret`, or a jump that may leave the function) executed in place and through the detour an
//! exit probe gets ([`dprobe_arch::exit_detour_code`]: the copy of the instructions before
//! the exit, the call to the engine's stub with the registers as at the exit, then the
//! relocated exit), from the same state, and compared as the runs are.

use std::collections::BTreeMap;

use dprobe_arch::{analyze_run, exit_detour_code, Addr, Insn, NotOptimized, DETOUR_STACK_SKIP};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

use crate::harness::{self, Ctx};
use crate::{bytes_at, describe_diff, finish, forms, hex, runs, Arena, Result_};

extern "C" {
    /// The runs' stub: returns at once (see `runs.rs`).
    fn dx_detour_stub();
}

fn decoded(insn: &Insn) -> Instruction {
    Decoder::with_ip(64, insn.code(), insn.addr.0, DecoderOptions::NONE).decode()
}

/// Whether `insn` can be an exit of a function: a return, or a direct jump (taken or not)
/// that the exit finder takes for a tail call when it leaves the function's bounds.
fn is_exit(insn: &Insn) -> bool {
    let i = decoded(insn);
    match i.flow_control() {
        FlowControl::Return => true,
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => i.op0_kind() == OpKind::NearBranch64,
        _ => false,
    }
}

/// The stack pointer at the exit of a run that got there (`None`: it stopped at an instruction
/// before the exit, so the detour never called its stub). A run stopped at the exit itself
/// (a `ret` to a non-canonical address faults there) still has it; after a `ret`, the return
/// address and the bytes it released were popped; a jump leaves the stack pointer alone.
fn rsp_at_exit(start: u64, exit: &Insn, after: &Result_) -> Option<u64> {
    let rip = after.regs.rip;
    if (start..exit.addr.0).contains(&rip) {
        return None;
    }
    let i = decoded(exit);
    Some(match i.flow_control() {
        FlowControl::Return if rip != exit.addr.0 => after.regs.rsp - 8 - u64::from(i.immediate16()),
        _ => after.regs.rsp,
    })
}

/// The run in place, and the code pages but for the run.
fn run_in_place(arena: &Arena, ctx: &Ctx, code: &[u8]) -> (Result_, Vec<u8>) {
    (crate::run_in_place(arena, ctx, code), runs::code_outside(arena, code.len()))
}

/// The run through its exit detour at the near page, its RIP and fault address mapped back to
/// the original instructions.
fn run_through_exit_detour(
    arena: &Arena,
    ctx: &Ctx,
    insns: &[Insn],
    code: &[u8],
) -> Result<(Result_, Vec<u8>), NotOptimized> {
    let stub = Addr(dx_detour_stub as *const () as u64);
    let site = insns.last().expect("a run").addr;
    let detour = exit_detour_code(site, insns, Addr(arena.near), stub)?;
    arena.reset();
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    bytes_at(detour.addr.0, detour.code.len()).copy_from_slice(&detour.code);
    let mut o = harness::run(ctx, detour.target().0);
    runs::map_back(&mut o, |a| {
        detour.prefix.as_ref().and_then(|p| p.original_of(a)).or_else(|| detour.window.original_of(a))
    });
    Ok((finish(arena, o), runs::code_outside(arena, code.len())))
}

#[test]
fn differential_execution_of_harvested_exit_windows() {
    let (_alone, arena) = crate::harness_alone();
    let catalog = crate::catalog();
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");

    let mut executed: BTreeMap<usize, usize> = BTreeMap::new();
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();

    for run in &catalog.runs {
        let at = arena.insn_addr();
        let Some(prepared) = forms::normalize_run(run, at, &arena) else { continue };
        if prepared.not_runnable.is_some() {
            continue;
        }
        let code = &prepared.bytes;
        let Ok(insns) = analyze_run(code, Addr(at), Addr(at), code.len()) else { continue };
        let Some(exit) = insns.last().filter(|i| is_exit(i)) else { continue };
        let mut ctx = prepared.ctx;
        ctx.avx512 = u64::from(avx512);
        let (original, original_code) = run_in_place(&arena, &ctx, code);
        if original.signal == harness::RUNAWAY {
            *skipped.entry("loops in place").or_default() += 1;
            continue;
        }
        // A run that stores into the code pages runs what it stored when its exit lands
        // there (at the `int3`s the harness's registers point to): bytes made of the values
        // it stored, addresses that change from one process to the next, which may read the
        // word below the red zone that the detour's call wrote. It cannot be compared.
        let offset = (at - arena.code) as usize;
        let untouched = |(k, b): (usize, &u8)| *b == if (offset..offset + code.len()).contains(&k) { 0 } else { 0xcc };
        if !original_code.iter().enumerate().all(untouched) {
            *skipped.entry("stores into the code pages").or_default() += 1;
            continue;
        }
        // A memory operand built from random registers can land on memory that changes from
        // one execution to the next (the harness's own): such a run cannot be compared.
        let (again, again_code) = run_in_place(&arena, &ctx, code);
        if again != original || again_code != original_code {
            *skipped.entry("reads memory that changes between runs").or_default() += 1;
            continue;
        }
        let (mut through, mut through_code) = match run_through_exit_detour(&arena, &ctx, &insns, code) {
            Ok(r) => r,
            Err(e) => {
                // The detour refused, as the engine would: the probe stays on int3.
                let kind = format!("{e:?}");
                let kind = kind.split('{').next().unwrap_or_default().trim().to_owned();
                *refused.entry(kind).or_default() += 1;
                continue;
            }
        };
        // The detour's call stores its return address below the red zone of the stack pointer
        // at the exit (free stack by the ABI; after a `leave` the harness's random frame
        // pointer may have put the stack in its data or code pages), after every instruction
        // before the exit ran: that word alone is not compared, where the run reached its exit.
        if let Some(rsp) = rsp_at_exit(at, exit, &original) {
            let slot = rsp.wrapping_sub(DETOUR_STACK_SKIP + 8);
            let regions = [
                (arena.stack, &mut through.stack, &original.stack),
                (arena.data, &mut through.data, &original.data),
                (arena.code, &mut through_code, &original_code),
            ];
            for (base, seen, expected) in regions {
                if let Some(k) = slot.checked_sub(base).map(|k| k as usize).filter(|k| k + 8 <= expected.len()) {
                    seen[k..k + 8].copy_from_slice(&expected[k..k + 8]);
                }
            }
        }
        if through != original || through_code != original_code {
            let mut diff = describe_diff(&original, &through);
            if through_code != original_code {
                diff.push_str(", code-page memory differs");
            }
            mismatches.push(format!("{} [{}] ({}) through an exit detour: {diff}", run.text, hex(code), run.source));
        }
        *executed.entry(insns.len()).or_default() += 1;
    }

    let total: usize = executed.values().sum();
    println!("differential execution: {total} exit windows executed through an exit detour (by length {executed:?})");
    println!("differential execution: exit windows refused an exit detour: {refused:?}");
    println!("differential execution: exit windows not runnable in this harness: {skipped:?}");
    crate::report_mismatches(&mismatches, "exit windows behave differently through their detour");
    assert!(total >= 100, "only {total} exit windows executed");
}
