//! The fuzz target's property on the stable toolchain: analyze, prepare, relocate and emulate
//! never panic on arbitrary bytes, addresses and slot placements (a fixed-seed sample, so the
//! test is repeatable; `cargo fuzz run analyze_prepare` explores further).
mod common;
use common::FlatMemory;
use dprobe_arch::*;

/// xorshift64*: deterministic, good enough to spread bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut analyzed, mut prepared, mut relocated, mut emulated) = (0, 0, 0, 0);
    for _ in 0..200_000 {
        let len = 1 + (rng.next() % 24) as usize;
        let code: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let base = match rng.next() % 3 {
            0 => rng.next(),
            1 => 0x40_0000,
            _ => u64::MAX - (rng.next() % 64),
        };
        let offset = rng.next() % len as u64;
        let Ok(insn) = analyze(&code, Addr(base), Addr(base.wrapping_add(offset))) else { continue };
        analyzed += 1;
        for slot in [base.wrapping_add(0x1000), rng.next(), base.wrapping_sub(1 << 40)] {
            for ending in [SlotEnding::JumpBack, SlotEnding::Trap] {
                if let Ok(s) = prepare_slot(&insn, Addr(slot), ending) {
                    prepared += 1;
                    assert!(s.len <= SLOT_SIZE);
                }
            }
        }
        if let Ok(run) = analyze_run(&code, Addr(base), insn.addr, 5) {
            for at in [base.wrapping_add(0x1000), rng.next()] {
                if let Ok(r) = relocate(&run, Addr(at)) {
                    relocated += 1;
                    assert_eq!(r.map.len(), run.len());
                }
            }
        }
        if let ExecClass::Emulate { emulation, .. } = insn.class {
            let mut regs = Regs { rsp: 0x1800, rcx: rng.next(), rflags: rng.next(), ..Regs::default() };
            let _ = emulate(emulation, insn.next(), &mut regs, &mut FlatMemory::new(0x1000, 0x1000));
            emulated += 1;
        }
    }
    println!(
        "random bytes: {analyzed} analyzed, {prepared} slots prepared, {relocated} runs relocated, {emulated} emulated"
    );
    assert!(analyzed > 10_000 && prepared > 10_000 && relocated > 1_000 && emulated > 100);
}
