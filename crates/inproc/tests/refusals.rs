//! Every bad input gets its typed error, and nothing is patched.
mod fixtures;
use fixtures::*;

use dprobe_arch::{AnalyzeError, Unsupported};
use dprobe_inproc::{register, register_all, Addr, Kprobe, ProbeError};
use dprobe_sym::ResolveError;

fn fn_addr(f: unsafe extern "C" fn() -> u64) -> Addr {
    Addr(f as usize as u64)
}

/// Register at `target` expecting an error; check nothing changed at `watch`.
fn refused(probe: Kprobe, watch: Option<Addr>) -> ProbeError {
    let before = watch.map(|w| code(w, 16));
    let err = register(probe).expect_err("must be refused");
    if let Some(w) = watch {
        assert_eq!(Some(code(w, 16)), before, "bytes changed after a refused registration");
    }
    assert!(dprobe_inproc::list().is_empty(), "a refused probe was listed");
    err
}

#[test]
fn address_inside_an_instruction() {
    let f = fn_addr(fx_movabs);
    let e = refused(Kprobe::addr(f.offset(3)), Some(f));
    assert!(
        matches!(e, ProbeError::Analyze(AnalyzeError::NotInstructionBoundary { insn_start, insn_len: 10, .. }) if insn_start == f),
        "{e:?}"
    );
    assert!(e.to_string().contains("not on an instruction boundary"), "{e}");
}

#[test]
fn unmapped_address() {
    let e = refused(Kprobe::addr(Addr(0x10)), None);
    assert!(matches!(e, ProbeError::InvalidAddress { addr: Addr(0x10), .. }), "{e:?}");
    assert!(e.to_string().contains("nothing is mapped there"), "{e}");
}

#[test]
fn data_address() {
    let data = Addr(std::ptr::addr_of!(fx_data) as u64);
    let e = refused(Kprobe::addr(data), None);
    assert!(matches!(e, ProbeError::InvalidAddress { .. }), "{e:?}");
    assert!(e.to_string().contains("data, not code"), "{e}");
    // SAFETY: reading the static.
    assert_eq!(unsafe { fx_data }, 1000);
}

#[test]
fn an_int3_instruction() {
    let at = Addr(fx_own_int3 as *const () as usize as u64).offset(1);
    let e = refused(Kprobe::addr(at), Some(at));
    // The program's own, or another tool's: never taken for an instruction dprobe could put back.
    assert!(matches!(e, ProbeError::ForeignBreakpoint { addr } if addr == at), "{e:?}");
    assert!(e.to_string().contains("not dprobe's"), "{e}");
}

#[test]
fn a_syscall_instruction() {
    let at = fn_addr(fx_syscall).offset(5);
    let e = refused(Kprobe::addr(at), Some(at));
    assert!(
        matches!(e, ProbeError::Analyze(AnalyzeError::Unsupported { reason: Unsupported::SystemCall, .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("`syscall`"), "{e}");
}

#[test]
fn dprobe_own_functions() {
    let own = Addr(register as *const () as usize as u64);
    let e = refused(Kprobe::addr(own), Some(own));
    assert!(matches!(e, ProbeError::Blacklisted { .. }), "{e:?}");
    let list = dprobe_inproc::blacklist().unwrap();
    assert!(list.iter().any(|(s, e, _)| *s <= own && own < *e), "the blacklist lists register()");
}

#[test]
fn a_symbol_that_does_not_exist() {
    let e = refused(Kprobe::symbol("no_such_function_anywhere"), None);
    assert!(
        matches!(&e, ProbeError::Target(ResolveError::SymbolNotFound { symbol }) if symbol == "no_such_function_anywhere"),
        "{e:?}"
    );
}

#[test]
fn an_offset_past_the_end_of_the_function() {
    let e = refused(Kprobe::symbol_offset("fx_mov_add", 100), Some(addr(fx_mov_add)));
    assert!(matches!(e, ProbeError::Target(ResolveError::OffsetOutOfFunction { offset: 100, size: 7, .. })), "{e:?}");
}

#[test]
fn a_batch_with_one_bad_probe_registers_nothing() {
    let good = addr(fx_spare1);
    let before = code(good, 8);
    let e = register_all(vec![Kprobe::addr(good), Kprobe::symbol("no_such_function_anywhere")]).expect_err("bad batch");
    assert!(matches!(e, ProbeError::Target(ResolveError::SymbolNotFound { .. })));
    assert_eq!(code(good, 8), before);
    assert!(dprobe_inproc::list().iter().all(|p| p.addr != good));
    assert_eq!(call2(fx_spare1, 6, 7), 42);
}
