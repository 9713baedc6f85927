//! analyze + prepare + relocate + emulate never panic, whatever the bytes and addresses.
#![no_main]

use dprobe_arch::{analyze, analyze_run, emulate, prepare_slot, relocate, Addr, ExecClass, NoMemory, Regs, SlotEnding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 17 {
        return;
    }
    let (head, code) = input.split_at(17);
    let base = u64::from_le_bytes(head[0..8].try_into().unwrap());
    let slot = u64::from_le_bytes(head[8..16].try_into().unwrap());
    let offset = u64::from(head[16]) % code.len().max(1) as u64;
    let Ok(insn) = analyze(code, Addr(base), Addr(base.wrapping_add(offset))) else { return };
    for ending in [SlotEnding::JumpBack, SlotEnding::Trap] {
        let _ = prepare_slot(&insn, Addr(slot), ending);
    }
    if let Ok(run) = analyze_run(code, Addr(base), insn.addr, 5) {
        let _ = relocate(&run, Addr(slot));
    }
    if let ExecClass::Emulate { emulation, .. } = insn.class {
        let _ = emulate(emulation, insn.next(), &mut Regs::default(), &mut NoMemory);
    }
});
