//! The aggregate dispatch: order, skip, enable, miss, panic.
use std::sync::{Arc, Mutex};

use dprobe_core::*;

fn site(probes: Vec<Kprobe>) -> Site<()> {
    Site {
        addr: Addr(0x1000),
        arch: (),
        probes: probes.into_iter().enumerate().map(|(i, p)| Arc::new(ProbeEntry::new(ProbeId(i as u64), p))).collect(),
    }
}

#[test]
fn pre_handlers_run_in_registration_order() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let probes = (0..3)
        .map(|i| {
            let order = order.clone();
            Kprobe::addr(Addr(0x1000)).pre(move |_| {
                order.lock().unwrap().push(i);
                PreAction::Continue
            })
        })
        .collect();
    let s = site(probes);
    assert_eq!(s.run_pre(&mut Regs::default(), &mut ()), PreOutcome::Execute { post: false });
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
}

#[test]
fn a_probe_asked_to_run_after_the_others_does_whenever_they_were_added() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let probe = |i: u64, last: bool| {
        let order = order.clone();
        let k = Kprobe::addr(Addr(0x1000)).pre(move |_| {
            order.lock().unwrap().push(i);
            // The one that runs last takes the call over: the others saw it first.
            if last {
                PreAction::SkipInstruction
            } else {
                PreAction::Continue
            }
        });
        Arc::new(ProbeEntry::new(ProbeId(i), if last { k.after_others() } else { k }))
    };
    let mut probes = Vec::new();
    for (i, last) in [(0, false), (1, true), (2, false), (3, true), (4, false)] {
        ProbeEntry::add_to(&mut probes, probe(i, last));
    }
    let s = Site { addr: Addr(0x1000), arch: (), probes };
    assert_eq!(s.run_pre(&mut Regs::default(), &mut ()), PreOutcome::Skip);
    assert_eq!(*order.lock().unwrap(), vec![0, 2, 4, 1], "the others in their order, then the first of the last");
}

#[test]
fn skip_stops_later_probes_and_the_instruction() {
    let s = site(vec![
        Kprobe::addr(Addr(0x1000)).pre(|r| {
            r.rip = 0x2000;
            PreAction::SkipInstruction
        }),
        Kprobe::addr(Addr(0x1000)).pre(|_| panic!("must not run")).post(|_| {}),
    ]);
    let mut regs = Regs::default();
    assert_eq!(s.run_pre(&mut regs, &mut ()), PreOutcome::Skip);
    assert_eq!(regs.rip, 0x2000);
    assert_eq!(s.probes[1].stats.snapshot().hits, 0);
}

#[test]
fn disabled_probes_neither_run_nor_count() {
    let s = site(vec![
        Kprobe::addr(Addr(0x1000)).pre(|_| panic!("disabled")).disabled(),
        Kprobe::addr(Addr(0x1000)).post(|_| {}),
    ]);
    assert!(s.any_enabled());
    assert_eq!(s.run_pre(&mut Regs::default(), &mut ()), PreOutcome::Execute { post: true });
    assert_eq!(s.probes[0].stats.snapshot().hits, 0);
    assert_eq!(s.probes[1].stats.snapshot().hits, 1);
}

#[test]
fn handler_changes_are_visible() {
    let s = site(vec![
        Kprobe::addr(Addr(0x1000)).pre(|r| {
            r.rdi += 1;
            PreAction::Continue
        }),
        Kprobe::addr(Addr(0x1000)).pre(|r| {
            r.rdi *= 10;
            PreAction::Continue
        }),
    ]);
    let mut regs = Regs { rdi: 4, ..Regs::default() };
    s.run_pre(&mut regs, &mut ());
    assert_eq!(regs.rdi, 50);
}

#[test]
fn miss_counts_enabled_probes_only() {
    let s = site(vec![Kprobe::addr(Addr(0x1000)), Kprobe::addr(Addr(0x1000)).disabled()]);
    s.miss();
    assert_eq!(s.probes[0].stats.snapshot().reentered, 1);
    assert_eq!(s.probes[1].stats.snapshot().reentered, 0);
}

#[test]
fn panicking_handler_is_caught_counted_and_disabled() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let s = site(vec![Kprobe::addr(Addr(0x1000)).pre(|_| panic!("boom"))]);
    assert_eq!(s.run_pre(&mut Regs::default(), &mut ()), PreOutcome::Execute { post: false });
    std::panic::set_hook(prev);
    let st = s.probes[0].stats.snapshot();
    assert_eq!((st.hits, st.handler_panics), (1, 1));
    assert!(!s.any_enabled());
}

#[test]
fn fault_handlers_are_offered_in_order_until_one_handles() {
    let s = site(vec![
        Kprobe::addr(Addr(0x1000)).fault(|_, _| false),
        Kprobe::addr(Addr(0x1000)).fault(|r, i| {
            r.rax = i.signal as u64;
            true
        }),
    ]);
    let mut regs = Regs::default();
    let info = FaultInfo { signal: 11, fault_addr: None, stage: FaultStage::Instruction };
    assert!(s.run_fault(&mut regs, &info, &mut ()));
    assert_eq!(regs.rax, 11);
}

/// An engine whose handlers "fault": the dispatcher counts it, asks the fault handler (a
/// handler too, called through the engine, where it does not fault), and disables the probe
/// when nobody handled it.
#[derive(Default)]
struct HandlersFault {
    /// The next call is a fault handler's, after a handler's fault.
    fault_handler_next: bool,
}
impl HandlerCall for HandlersFault {
    fn call(&mut self, mut f: impl FnMut()) -> Result<(), HandlerFault> {
        if std::mem::take(&mut self.fault_handler_next) {
            f();
            return Ok(());
        }
        self.fault_handler_next = true;
        Err(HandlerFault { signal: 11, addr: Some(Addr(0x8)) })
    }
}

#[test]
fn faulting_handler_goes_to_its_fault_handler() {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let s = site(vec![
        Kprobe::addr(Addr(0x1000)).pre(|_| PreAction::Continue).fault(move |_, info| {
            *seen2.lock().unwrap() = Some(*info);
            true
        }),
        Kprobe::addr(Addr(0x1000)).pre(|_| PreAction::Continue),
    ]);
    s.run_pre(&mut Regs::default(), &mut HandlersFault::default());
    assert_eq!(
        *seen.lock().unwrap(),
        Some(FaultInfo { signal: 11, fault_addr: Some(Addr(0x8)), stage: FaultStage::PreHandler })
    );
    assert_eq!(s.probes[0].stats.snapshot().handler_faults, 1);
    assert!(s.probes[0].stats.is_enabled(), "handled: stays enabled");
    assert!(!s.probes[1].stats.is_enabled(), "unhandled: disabled");
}
