//! What handlers can do: change arguments, override a function, aggregate, nest.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, register_kretprobe, Kprobe, Kretprobe, PreAction, ReturnProbe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[test]
fn changing_an_argument_register_changes_the_result() {
    let p = register(Kprobe::addr(addr(fx_mov_add)).pre(|r| {
        r.rsi = 100;
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fx_mov_add, 1, 2), 101);
    p.unregister().unwrap();
    assert_eq!(call2(fx_mov_add, 1, 2), 3);
}

#[test]
fn changing_a_vector_register_changes_a_floating_point_result() {
    let at = dprobe_inproc::Addr(fx_fadd as *const () as usize as u64);
    let p = register(Kprobe::addr(at).pre(|r| {
        // The second double argument arrives in xmm1: make it 40.0.
        r.xmm[1] = u128::from(40.0f64.to_bits());
        PreAction::Continue
    }))
    .unwrap();
    // SAFETY: fx_fadd adds its two double arguments.
    assert_eq!(unsafe { fx_fadd(std::hint::black_box(2.0), std::hint::black_box(1.0)) }, 42.0);
    assert_eq!(p.hits(), 1);
}

#[test]
fn skipping_the_instruction_overrides_the_function() {
    // Fault injection: return 42 straight from the entry, as the kernel's
    // override_function_with_return does.
    static POST_CALLS: AtomicU64 = AtomicU64::new(0);
    let p = register(
        Kprobe::addr(addr(fx_spare1))
            .pre(|r| {
                // SAFETY: at the entry of a called function, rsp points at the return address.
                r.rip = unsafe { *(r.rsp as *const u64) };
                r.rsp += 8;
                r.rax = 42;
                PreAction::SkipInstruction
            })
            .post(|_| {
                POST_CALLS.fetch_add(1, Relaxed);
            }),
    )
    .unwrap();
    for i in 0..100 {
        assert_eq!(call2(fx_spare1, i, 3), 42);
    }
    assert_eq!(p.hits(), 100);
    assert_eq!(POST_CALLS.load(Relaxed), 0, "a skipped instruction runs no post-handler");
    drop(p);
    assert_eq!(call2(fx_spare1, 5, 3), 15);
}

#[test]
fn two_probes_at_one_address_run_in_registration_order() {
    let first = register(Kprobe::addr(addr(fx_push_add)).pre(|r| {
        r.rdi += 1;
        PreAction::Continue
    }))
    .unwrap();
    let second = register(Kprobe::addr(addr(fx_push_add)).pre(|r| {
        r.rdi *= 10;
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fx_push_add, 4, 0), 50, "(4 + 1) * 10: first runs first");
    assert_eq!((first.hits(), second.hits()), (1, 1));
    // Armed: an int3, or the jump that replaced it.
    let armed = |p: &dprobe_inproc::Probe| if p.optimized().is_ok() { [0xe9] } else { [0xcc] };
    assert_eq!(code(addr(fx_push_add), 1), armed(&first));
    first.unregister().unwrap();
    assert_eq!(call2(fx_push_add, 4, 0), 40, "the second alone");
    assert_eq!(code(addr(fx_push_add), 1), armed(&second), "still armed for the second");
    second.unregister().unwrap();
    assert_eq!(code(addr(fx_push_add), 1), [0x55], "push %rbp is back");
    assert_eq!(call2(fx_push_add, 4, 0), 4);
}

#[test]
fn a_probe_hit_inside_a_handler_runs_no_handler_and_counts_as_missed() {
    static INNER_HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
    let inner = register(Kprobe::addr(addr1(fx_inner)).pre(|_| {
        INNER_HANDLER_RUNS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let outer = register(Kprobe::addr(addr1(fx_outer)).pre(|r| {
        // SAFETY: fx_inner computes on its argument only.
        r.rdi = unsafe { fx_inner(std::hint::black_box(r.rdi)) };
        PreAction::Continue
    }))
    .unwrap();
    for i in 0..10 {
        // SAFETY: as above.
        assert_eq!(unsafe { fx_outer(std::hint::black_box(i)) }, i + 3, "inner still executed: +1, then +2");
    }
    // SAFETY: as above.
    assert_eq!(unsafe { fx_inner(std::hint::black_box(1)) }, 2);
    assert_eq!(outer.hits(), 10);
    assert_eq!((inner.hits(), inner.nmissed()), (1, 10));
    assert_eq!(INNER_HANDLER_RUNS.load(Relaxed), 1);
}

#[test]
fn disable_and_enable() {
    let p = register(Kprobe::addr(addr1(fx_riprel)).pre(|_| PreAction::Continue)).unwrap();
    // SAFETY: fx_riprel reads a static and adds its argument.
    let call = || unsafe { fx_riprel(std::hint::black_box(1)) };
    call();
    p.disable().unwrap();
    assert_eq!(code(p.addr(), 1), [0x48], "disarmed while disabled");
    call();
    assert_eq!(p.hits(), 1);
    p.enable().unwrap();
    let armed = if p.optimized().is_ok() { 0xe9 } else { 0xcc };
    assert_eq!(code(p.addr(), 1), [armed], "armed again: a jump, or int3 where it cannot be one");
    call();
    assert_eq!(p.hits(), 2);
}

#[test]
fn registration_from_inside_a_handler_is_refused() {
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let p = register(Kprobe::addr(addr(fx_spare2)).pre(|_| {
        if matches!(register(Kprobe::addr(addr(fx_mov_add))), Err(dprobe_inproc::ProbeError::InHandler)) {
            REFUSED.fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fx_spare2, 5, 3), 2);
    assert_eq!(REFUSED.load(Relaxed), 1);
    drop(p);
}

#[test]
fn unregistering_a_return_probe_from_inside_a_handler_is_refused_and_it_keeps_working() {
    static HELD: Mutex<Option<ReturnProbe>> = Mutex::new(None);
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let (plain, other) = (call2(fx_push_push_mov, 5, 3), call2(fx_park, 5, 3));
    let r = register_kretprobe(Kretprobe::addr(addr(fx_push_push_mov)).handler(|_, _| {
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    *HELD.lock().unwrap() = Some(r);
    let p = register(Kprobe::addr(addr(fx_park)).pre(|_| {
        // A test's own lock in a handler: nothing else takes it while the handler runs.
        if let Some(r) = HELD.lock().unwrap().take() {
            // Refused: the probe is dropped here, and its drop is refused too (it stays
            // registered, leaked, as a dropped kprobe inside a handler does).
            if matches!(r.unregister(), Err(dprobe_inproc::ProbeError::InHandler)) {
                REFUSED.fetch_add(1, Relaxed);
            }
        }
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fx_park, 5, 3), other);
    assert_eq!(REFUSED.load(Relaxed), 1);
    drop(p);
    // Nothing of it was taken away: its returns are still seen.
    assert_eq!(call2(fx_push_push_mov, 5, 3), plain);
    assert_eq!(RETURNS.load(Relaxed), 1);
}

fn addr1(f: unsafe extern "C" fn(u64) -> u64) -> dprobe_inproc::Addr {
    dprobe_inproc::Addr(f as usize as u64)
}
