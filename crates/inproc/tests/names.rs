//! Probes named as users name them: C++ operators whose names hold a `+`, libraries such as
//! `libstdc++`, and addresses in a binary's own numbering.
use dprobe_inproc::{register, Kprobe, PreAction};
use dprobe_test_fixtures::fxcpp_add_money;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[test]
fn a_cpp_operator_plus_is_probed_by_its_name() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let probe = register(Kprobe::symbol("operator+").pre(|regs| {
        SEEN.fetch_add(regs.rdi, Relaxed);
        PreAction::Continue
    }))
    .expect("operator+ resolves");
    let mut sum = 0;
    for i in 1..=3 {
        // SAFETY: adds two numbers.
        sum += unsafe { fxcpp_add_money(i, 100) };
    }
    assert_eq!(sum, 306, "the probed operator still adds");
    assert_eq!(probe.hits(), 3);
    assert_eq!(SEEN.load(Relaxed), 1 + 2 + 3, "its first argument at each call");
}

#[test]
fn a_library_with_a_plus_in_its_name() {
    let at = dprobe_inproc::resolve(&Kprobe::symbol("libstdc++:__cxa_throw")).expect("libstdc++'s __cxa_throw").addr;
    let maps = dprobe_sym::read_maps().unwrap();
    let f = dprobe_sym::Symbols::load(&maps).find("__cxa_throw").unwrap().clone();
    assert_eq!(at, f.start);
    assert!(f.object_file_name().starts_with("libstdc++.so"), "{}", f.object);
}
