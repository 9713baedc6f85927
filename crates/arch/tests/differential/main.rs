//! Differential execution: for every instruction form harvested from real compiler output
//! (gcc at -O0..-O3 on `workload.c`, clang too when installed, libc's exported functions, this
//! test binary's own LLVM-compiled code) and a hand-picked set, run the instruction in place
//! and from each out-of-line copy dprobe prepares for it (near slot, far slot through a
//! scratch register, trap-ending slot), or through dprobe's emulator, from the same register
//! and memory state, and compare every general register, the flags, RIP after, xmm0-15 and
//! the memory it could touch.
//!
//! The test prints how many forms it executed and how many were refused; `runs` does the same
//! for runs of consecutive instructions, relocated, and `exit_runs` for those that end with an
//! exit, through an exit probe's detour.

mod exit_runs;
mod forms;
mod harness;
mod runs;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use dprobe_arch::{
    analyze, emulate, prepare_slot, Addr, AnalyzeError, ExecClass, Gpr, Memory, MemoryFault, Regs, SlotCode, SlotEnding,
};
use harness::{Ctx, Outcome};

const PAGE: usize = 4096;
const REGION: usize = 64 * 1024;

/// The harness runs one piece of code at a time in the whole process.
static HARNESS: Mutex<()> = Mutex::new(());

/// The harness, this test's alone while the guard lives, and a fresh arena.
fn harness_alone() -> (MutexGuard<'static, ()>, Arena) {
    let alone = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    harness::install();
    (alone, Arena::new())
}

/// The harvested forms and runs, harvested once for both tests.
fn catalog() -> &'static forms::Catalog {
    static CATALOG: OnceLock<forms::Catalog> = OnceLock::new();
    CATALOG.get_or_init(forms::harvest)
}

/// Memory of the test: an executable code area, slot pages near and far, data and stack.
struct Arena {
    reserved: u64,
    code: u64,
    near: u64,
    far: u64,
    data: u64,
    stack: u64,
    pristine_data: Vec<u8>,
    pristine_stack: Vec<u8>,
}

/// Code pages are executable; data and stack are not, as in a real program: a run that
/// calls or jumps into its data (a target taken from the random registers) faults there at
/// once, the same way in place and relocated, instead of executing the data's bytes.
const CODE: libc::c_int = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
const DATA: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

/// The address space the arena is carved from, inaccessible but for the arena's pages.
///
/// A run computes addresses from what it loads: `movslq -0x14(%rbp),%rcx; movss
/// %xmm0,(%rax,%rcx,4)` loads 0xcccccccc from the code pages and stores 3.2 GiB below the
/// data. Such an address must fault, the same way in place and relocated, and never reach the
/// test binary's own memory (a store there crashes it later, far from the cause, and only when
/// address-space randomization put something there). A 32-bit value, sign- or zero-extended,
/// times a scale of 8, plus a 32-bit displacement, stays within 34 GiB of a base register that
/// points into the arena; the reservation covers 40 GiB on each side.
const RESERVATION: usize = 80 << 30;

fn bytes_at(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: only called on the arena's own pages with lengths inside them; the harness
    // is single-threaded.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Where the far slot page lies from the code: beyond a rel32's reach, inside the reservation.
const FAR: u64 = 8 << 30;

impl Arena {
    fn new() -> Arena {
        // SAFETY: a fresh inaccessible mapping that reserves address space (no memory is
        // committed); the arena's pages are made accessible inside it below.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVATION,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(reserved, libc::MAP_FAILED, "cannot reserve the arena's address space");
        let code = reserved as u64 + (RESERVATION / 2) as u64;
        // A `%fs:(%reg)` operand adds the thread pointer (in the data) to a register that
        // points into the arena: with both at or above 2^46 the sum is not a canonical
        // address, so it faults instead of reaching the test binary's memory.
        assert!(reserved as u64 >= 1 << 46, "the arena is mapped too low: {reserved:?}");
        let open = |at: u64, len: usize, prot: libc::c_int| {
            // SAFETY: pages of the reservation above, which nothing else uses.
            let ok = unsafe { libc::mprotect(at as *mut libc::c_void, len, prot) } == 0;
            assert!(ok, "cannot open the arena's pages at {at:#x}");
            at
        };
        open(code, 4 * PAGE, CODE);
        let near = open(code + 16 * PAGE as u64, PAGE, CODE);
        let far = open(code - FAR, PAGE, CODE);
        let data = open(code + (1 << 20), REGION, DATA);
        let stack = open(code + (2 << 20), REGION, DATA);
        let int3_area = code + 0x2000;
        let pattern = |i: usize| (int3_area + (i as u64 % 256) * 8).to_le_bytes();
        let pristine_data: Vec<u8> = (0..REGION / 8).flat_map(pattern).collect();
        let pristine_stack: Vec<u8> = (0..REGION / 8).flat_map(pattern).collect();
        Arena { reserved: reserved as u64, code, near, far, data, stack, pristine_data, pristine_stack }
    }

    fn insn_addr(&self) -> u64 {
        self.code + 0x800
    }

    fn reset(&self) {
        bytes_at(self.data, REGION).copy_from_slice(&self.pristine_data);
        bytes_at(self.stack, REGION).copy_from_slice(&self.pristine_stack);
        bytes_at(self.code, 4 * PAGE).fill(0xcc);
        bytes_at(self.near, PAGE).fill(0xcc);
        bytes_at(self.far, PAGE).fill(0xcc);
    }

    fn memory(&self) -> (Vec<u8>, Vec<u8>) {
        (bytes_at(self.data, REGION).to_vec(), bytes_at(self.stack, REGION).to_vec())
    }

    fn contains(&self, addr: u64, len: usize) -> bool {
        let within = |base: u64, size: usize| addr >= base && addr + len as u64 <= base + size as u64;
        within(self.data, REGION) || within(self.stack, REGION) || within(self.code, 4 * PAGE)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena's own reservation; the harness runs no code there any more.
        unsafe { libc::munmap(self.reserved as *mut libc::c_void, RESERVATION) };
    }
}

/// The emulator's view of the arena.
struct ArenaMemory<'a>(&'a Arena);

impl Memory for ArenaMemory<'_> {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        if !self.0.contains(addr.0, buf.len()) {
            return Err(MemoryFault { addr, len: buf.len(), write: false });
        }
        buf.copy_from_slice(bytes_at(addr.0, buf.len()));
        Ok(())
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        if !self.0.contains(addr.0, data.len()) {
            return Err(MemoryFault { addr, len: data.len(), write: true });
        }
        bytes_at(addr.0, data.len()).copy_from_slice(data);
        Ok(())
    }
}

/// Where execution stopped, the registers then, and memory.
#[derive(Debug, PartialEq, Eq)]
struct Result_ {
    signal: i32,
    fault_addr: u64,
    regs: Regs,
    data: Vec<u8>,
    stack: Vec<u8>,
}

const FLAGS: u64 = 0xcd5 | 0x400;

fn normalize(mut r: Regs) -> Regs {
    r.rflags &= FLAGS;
    r
}

fn finish(arena: &Arena, o: Outcome) -> Result_ {
    let (data, stack) = arena.memory();
    Result_ { signal: o.signal, fault_addr: o.fault_addr, regs: normalize(o.regs), data, stack }
}

/// Run the in-place instruction.
fn run_in_place(arena: &Arena, ctx: &Ctx, code: &[u8]) -> Result_ {
    arena.reset();
    bytes_at(arena.insn_addr(), code.len()).copy_from_slice(code);
    finish(arena, harness::run(ctx, arena.insn_addr()))
}

/// Run the copy in `slot`, mapping the end state back to the original's.
fn run_slot(arena: &Arena, ctx: &Ctx, slot: &SlotCode) -> Result_ {
    arena.reset();
    bytes_at(slot.addr.0, slot.len).copy_from_slice(slot.code());
    let mut o = harness::run(ctx, slot.entry().0);
    if o.signal == libc::SIGTRAP && Some(Addr(o.regs.rip - 1)) == slot.trap_addr() {
        // The post-step trap: what the engine does before post-handlers, then "as if" the
        // original had trapped on the int3 after itself.
        slot.finish_step(&mut o.regs);
        o.regs.rip += 1;
    } else if o.signal != libc::SIGTRAP && slot.contains(Addr(o.regs.rip)) {
        slot.map_fault(&mut o.regs, &mut ArenaMemory(arena)).expect("map fault");
        // SIGFPE and SIGILL report the instruction's address, which the engine maps too.
        if slot.contains(Addr(o.fault_addr)) {
            o.fault_addr = slot.original.0;
        }
    }
    if slot.far_scratch.is_some() {
        // The far slot saved its scratch register below the red zone (free stack by the ABI);
        // that word is the one memory difference a far slot is allowed.
        let saved = (arena.stack + (REGION / 2) as u64 - 136 - arena.stack) as usize;
        bytes_at(arena.stack + saved as u64, 8).copy_from_slice(&arena.pristine_stack[saved..saved + 8]);
    }
    finish(arena, o)
}

/// Emulate from `ctx`, with the same arrival convention as a run (a trap at the new RIP).
fn run_emulated(arena: &Arena, ctx: &Ctx, insn: &dprobe_arch::Insn, e: dprobe_arch::Emulation) -> Result_ {
    arena.reset();
    let mut regs = regs_of(ctx, insn.addr.0);
    match emulate(e, insn.next(), &mut regs, &mut ArenaMemory(arena)) {
        Ok(()) => {}
        Err(err) => panic!("emulation faulted in the arena: {err}"),
    }
    // Arrival: int3 there -> SIGTRAP with rip+1; anything else -> instruction fetch fault.
    let lands_on_int3 = arena.contains(regs.rip, 1) && bytes_at(regs.rip, 1)[0] == 0xcc;
    let (signal, fault_addr) = if lands_on_int3 {
        regs.rip += 1;
        (libc::SIGTRAP, 0)
    } else {
        (libc::SIGSEGV, regs.rip)
    };
    let (data, stack) = arena.memory();
    Result_ { signal, fault_addr, regs: normalize(regs), data, stack }
}

fn regs_of(ctx: &Ctx, rip: u64) -> Regs {
    let mut r = Regs { rip, rflags: ctx.rflags, xmm: ctx.xmm, ..Regs::default() };
    for g in Gpr::ALL {
        r.set(g, ctx.gpr[g.number()]);
    }
    r
}

fn describe_diff(a: &Result_, b: &Result_) -> String {
    let mut out = Vec::new();
    if (a.signal, a.fault_addr) != (b.signal, b.fault_addr) {
        out.push(format!("signal {} @{:#x} vs {} @{:#x}", a.signal, a.fault_addr, b.signal, b.fault_addr));
    }
    for g in Gpr::ALL {
        if a.regs.get(g) != b.regs.get(g) {
            out.push(format!("{g:?} {:#x} vs {:#x}", a.regs.get(g), b.regs.get(g)));
        }
    }
    if a.regs.rip != b.regs.rip {
        out.push(format!("rip {:#x} vs {:#x}", a.regs.rip, b.regs.rip));
    }
    if a.regs.rflags != b.regs.rflags {
        out.push(format!("rflags {:#x} vs {:#x}", a.regs.rflags, b.regs.rflags));
    }
    if a.regs.xmm != b.regs.xmm {
        out.push("xmm differ".into());
    }
    if a.data != b.data {
        out.push("data memory differs".into());
    }
    if a.stack != b.stack {
        out.push("stack memory differs".into());
    }
    out.join(", ")
}

#[test]
fn differential_execution_of_harvested_forms() {
    let (_alone, arena) = harness_alone();
    let catalog = catalog();
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");

    let mut executed = 0usize;
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_runnable: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();

    for form in &catalog.forms {
        let at = arena.insn_addr();
        let Some(prepared) = forms::normalize(form, at, &arena) else {
            *not_runnable.entry("cannot be re-encoded at the test address").or_default() += 1;
            continue;
        };
        if let Some(why) = prepared.not_runnable {
            *not_runnable.entry(why).or_default() += 1;
            continue;
        }
        let insn = match analyze(&prepared.bytes, Addr(at), Addr(at)) {
            Ok(i) => i,
            Err(AnalyzeError::Unsupported { reason, .. }) => {
                *refused.entry(format!("{reason:?}")).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{}: {e}", form.text),
        };
        let mut ctx = prepared.ctx;
        ctx.avx512 = u64::from(avx512);
        let original = run_in_place(&arena, &ctx, &prepared.bytes);
        let mut check = |what: &str, other: Result_| {
            if other != original {
                mismatches.push(format!(
                    "{} [{}] ({}): {}: {}",
                    form.text,
                    hex(&prepared.bytes),
                    form.source,
                    what,
                    describe_diff(&original, &other)
                ));
            }
        };
        match insn.class {
            ExecClass::Emulate { emulation, copyable, .. } => {
                check("emulated", run_emulated(&arena, &ctx, &insn, emulation));
                if copyable {
                    let slot = prepare_slot(&insn, Addr(arena.near), SlotEnding::JumpBack).unwrap();
                    check("boosted copy of an absolute branch", run_slot(&arena, &ctx, &slot));
                }
                *by_class.entry("emulated").or_default() += 1;
            }
            ExecClass::Copy { rip_relative } => {
                for (slot_page, ending, what) in [
                    (arena.near, SlotEnding::JumpBack, "near boosted slot"),
                    (arena.near, SlotEnding::Trap, "near post-step slot"),
                    (arena.far, SlotEnding::JumpBack, "far boosted slot"),
                ] {
                    match prepare_slot(&insn, Addr(slot_page), ending) {
                        Ok(slot) => check(what, run_slot(&arena, &ctx, &slot)),
                        Err(dprobe_arch::PrepareError::OutOfReach { .. }) if slot_page == arena.far => {
                            *refused.entry("far slot only: RIP-relative and moves the stack".into()).or_default() += 1;
                        }
                        Err(e) => panic!("{}: {e}", form.text),
                    }
                }
                *by_class.entry(if rip_relative.is_some() { "copied, RIP-relative" } else { "copied" }).or_default() +=
                    1;
            }
        }
        executed += 1;
    }

    let refused_total: usize = refused.values().sum();
    println!(
        "differential execution: {} distinct forms harvested ({})",
        catalog.forms.len(),
        catalog.sources.join(", ")
    );
    println!("differential execution: {executed} forms executed {by_class:?}, {refused_total} refused {refused:?}");
    println!("differential execution: not runnable in this harness: {not_runnable:?}");
    report_mismatches(&mismatches, "forms behave differently out of line");
    assert!(executed >= 300, "only {executed} forms executed");
}

/// Print the first mismatches found, and fail if there is any: `what` says how they differ.
fn report_mismatches(mismatches: &[String], what: &str) {
    for m in mismatches.iter().take(40) {
        println!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} {what}", mismatches.len());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}
