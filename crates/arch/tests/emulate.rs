//! Emulation of control flow and pushes on a flat memory.
mod common;
use common::FlatMemory;
use dprobe_arch::*;

const AT: Addr = Addr(0x40_1000);
const STACK: u64 = 0x7000;

fn run(bytes: &[u8], regs: &mut Regs, mem: &mut FlatMemory) -> Result<(), EmulateError> {
    let insn = analyze(bytes, AT, AT).unwrap();
    let ExecClass::Emulate { emulation, .. } = insn.class else { panic!("not emulated") };
    emulate(emulation, insn.next(), regs, mem)
}

fn setup() -> (Regs, FlatMemory) {
    (Regs { rsp: STACK + 0x800, rip: AT.0, ..Regs::default() }, FlatMemory::new(STACK, 0x1000))
}

#[test]
fn call_pushes_return_address() {
    let (mut r, mut m) = setup();
    run(&[0xe8, 0x10, 0, 0, 0], &mut r, &mut m).unwrap();
    assert_eq!(r.rip, AT.0 + 0x15);
    assert_eq!(r.rsp, STACK + 0x7f8);
    assert_eq!(m.read_u64(Addr(r.rsp)).unwrap(), AT.0 + 5);
}

#[test]
fn call_through_memory_reads_target_before_push() {
    let (mut r, mut m) = setup();
    // call *0x8(%rsp): reads [rsp+8] with the rsp before the push.
    m.write_u64(Addr(STACK + 0x808), 0x1234_5678).unwrap();
    run(&[0xff, 0x54, 0x24, 0x08], &mut r, &mut m).unwrap();
    assert_eq!(r.rip, 0x1234_5678);
    assert_eq!(m.read_u64(Addr(STACK + 0x7f8)).unwrap(), AT.0 + 4);
}

#[test]
fn ret_imm_pops_extra() {
    let (mut r, mut m) = setup();
    m.write_u64(Addr(r.rsp), 0xabc).unwrap();
    run(&[0xc2, 0x10, 0x00], &mut r, &mut m).unwrap();
    assert_eq!((r.rip, r.rsp), (0xabc, STACK + 0x800 + 8 + 16));
}

#[test]
fn push_register() {
    let (mut r, mut m) = setup();
    r.rbp = 0x5555;
    run(&[0x55], &mut r, &mut m).unwrap();
    assert_eq!(m.read_u64(Addr(r.rsp)).unwrap(), 0x5555);
    assert_eq!(r.rip, AT.0 + 1);
}

#[test]
fn push_rsp_pushes_old_value() {
    let (mut r, mut m) = setup();
    run(&[0x54 /* push %rsp */], &mut r, &mut m).unwrap();
    assert_eq!(m.read_u64(Addr(r.rsp)).unwrap(), STACK + 0x800);
}

#[test]
fn faulting_push_changes_nothing() {
    let (mut r, mut m) = setup();
    r.rsp = 0x10; // unmapped
    let before = r;
    let e = run(&[0x55], &mut r, &mut m).unwrap_err();
    assert_eq!(e, EmulateError::Fault(MemoryFault { addr: Addr(0x8), len: 8, write: true }));
    assert_eq!(r, before);
}

#[test]
fn jcc_follows_flags() {
    let (mut r, mut m) = setup();
    // jl: taken when SF != OF.
    r.rflags = 1 << 7;
    run(&[0x7c, 0x10], &mut r, &mut m).unwrap();
    assert_eq!(r.rip, AT.0 + 0x12);
    r.rflags = (1 << 7) | (1 << 11);
    run(&[0x7c, 0x10], &mut r, &mut m).unwrap();
    assert_eq!(r.rip, AT.0 + 2);
}

#[test]
fn loopne_decrements_rcx_and_tests_zf() {
    let (mut r, mut m) = setup();
    r.rcx = 2;
    run(&[0xe0, 0x10 /* loopne */], &mut r, &mut m).unwrap();
    assert_eq!((r.rcx, r.rip), (1, AT.0 + 0x12));
    r.rcx = 2;
    r.rflags = 1 << 6;
    run(&[0xe0, 0x10], &mut r, &mut m).unwrap();
    assert_eq!((r.rcx, r.rip), (1, AT.0 + 2));
}
