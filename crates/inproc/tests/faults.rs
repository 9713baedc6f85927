//! Faults in handlers and in the displaced instruction.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, FaultInfo, FaultStage, Kprobe, PreAction};
use std::sync::Mutex;

static SEEN: Mutex<Vec<FaultInfo>> = Mutex::new(Vec::new());

#[test]
fn a_faulting_handler_is_abandoned_and_reported() {
    let p = register(
        Kprobe::addr(dprobe_inproc::Addr(fx_inner as *const () as usize as u64))
            .pre(|_| {
                // SAFETY: deliberately not safe: this read faults, and dprobe must recover.
                let v = unsafe { std::ptr::read_volatile(16 as *const u64) };
                std::hint::black_box(v);
                PreAction::Continue
            })
            .fault(|_, info| {
                if let Ok(mut seen) = SEEN.try_lock() {
                    seen.push(*info);
                }
                false
            }),
    )
    .unwrap();
    // SAFETY: fx_inner adds one to its argument.
    assert_eq!(unsafe { fx_inner(std::hint::black_box(41)) }, 42, "the program went on");
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![FaultInfo {
            signal: libc::SIGSEGV,
            fault_addr: Some(dprobe_inproc::Addr(16)),
            stage: FaultStage::PreHandler
        }]
    );
    let st = p.stats();
    assert_eq!((st.hits, st.handler_faults), (1, 1));
    assert!(!p.is_enabled(), "an unhandled handler fault disables the probe");
    // SAFETY: as above.
    assert_eq!(unsafe { fx_inner(std::hint::black_box(1)) }, 2);
    assert_eq!(p.hits(), 1);
}

#[test]
fn a_fault_in_the_displaced_instruction_goes_to_the_fault_handler() {
    // fx_load: mov (%rdi),%rax; ret. Executed from a boosted slot; on a bad pointer the
    // fault handler makes it return 0xdead instead.
    let at = dprobe_inproc::Addr(fx_load as *const () as usize as u64);
    let p = register(Kprobe::addr(at).pre(|_| PreAction::Continue).fault(move |r, info| {
        if info.stage != FaultStage::Instruction || r.rip != at.0 {
            return false;
        }
        r.rax = 0xdead;
        r.rip = at.0 + 3;
        true
    }))
    .unwrap();
    let good = 77u64;
    // SAFETY: a valid pointer, then one the fault handler deals with.
    unsafe {
        assert_eq!(fx_load(std::hint::black_box(&good)), 77);
        assert_eq!(fx_load(std::hint::black_box(std::ptr::dangling::<u64>())), 0xdead);
        assert_eq!(fx_load(std::hint::black_box(&good)), 77);
    }
    assert_eq!(p.hits(), 3);
}

#[test]
fn a_panicking_handler_is_caught_counted_and_disabled() {
    let p = register(Kprobe::addr(dprobe_inproc::Addr(fx_outer as *const () as u64)).pre(|_| panic!("handler bug")))
        .unwrap();
    // SAFETY: fx_outer adds two to its argument.
    assert_eq!(unsafe { fx_outer(std::hint::black_box(1)) }, 3, "the program went on");
    // SAFETY: as above.
    assert_eq!(unsafe { fx_outer(std::hint::black_box(1)) }, 3);
    let st = p.stats();
    assert_eq!((st.hits, st.handler_panics), (1, 1), "disabled after the first panic");
    assert!(!p.is_enabled());
}

#[test]
fn a_tool_handler_that_faults_leaves_the_threads_later_hits_counted() {
    // A tool's handler marks its work as the tool's (`tool_work`); a fault abandons it before
    // the mark is dropped, and the thread's next hits must still be the program's.
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static FAULT_NOW: AtomicBool = AtomicBool::new(true);
    let p = register(
        Kprobe::addr(addr(fx_spare1))
            .pre(|_| {
                let _tool = dprobe_inproc::tool_work();
                if FAULT_NOW.swap(false, Relaxed) {
                    // SAFETY: deliberately not safe: this read faults, and dprobe must recover.
                    let v = unsafe { std::ptr::read_volatile(16 as *const u64) };
                    std::hint::black_box(v);
                }
                PreAction::Continue
            })
            .fault(|_, info| info.stage == FaultStage::PreHandler),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(call2(fx_spare1, 6, 7), 42, "the program went on");
    }
    let st = p.stats();
    assert_eq!((st.hits, st.handler_faults, st.reentered), (3, 1, 0));
    assert!(p.is_enabled(), "a handled fault keeps the probe");
}

#[test]
fn a_fault_handler_runs_as_a_handler_guarded_against_its_own_faults() {
    // The fault handler of a faulting pre-handler is a handler too: a probed function it calls
    // counts as missed (the kernel's rule), and a fault of its own leaves the fault unhandled
    // (the probe disabled) instead of killing the program.
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let called = register(Kprobe::addr(addr(fx_spare2)).pre(|_| PreAction::Continue)).unwrap();
    let faulting = register(
        Kprobe::addr(addr(fx_mov_add))
            .pre(|_| {
                // SAFETY: deliberately not safe: this read faults, and dprobe must recover.
                let v = unsafe { std::ptr::read_volatile(16 as *const u64) };
                std::hint::black_box(v);
                PreAction::Continue
            })
            .fault(|_, _| {
                if CALLS.fetch_add(1, Relaxed) == 0 {
                    return call2(fx_spare2, 9, 4) == 5;
                }
                // SAFETY: deliberately not safe: the fault handler's own fault.
                let v = unsafe { std::ptr::read_volatile(24 as *const u64) };
                std::hint::black_box(v) == 0
            }),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(call2(fx_mov_add, 40, 2), 42, "the program went on");
    }
    let st = faulting.stats();
    assert_eq!((st.hits, st.handler_faults, CALLS.load(Relaxed)), (2, 2, 2));
    assert!(!faulting.is_enabled(), "a fault handler that faults handled nothing");
    let st = called.stats();
    assert_eq!((st.hits, st.reentered), (0, 1), "the fault handler's call was missed");
    assert_eq!(call2(fx_spare2, 9, 4), 5);
    assert_eq!(called.hits(), 1, "the program's own call is a hit");
}
