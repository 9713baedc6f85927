//! What the ptrace engine's tests share: the target program (compiled once per test run)
//! and counting handlers.
#![allow(dead_code)]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The target program.
pub fn target() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/target.c"), "target", &["-O2", "-pthread"])
}

/// A C++ program that adds with its own `operator+` (`operators N`).
pub fn operators() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/operators.cpp"), "operators", &["-O2"])
}

/// The library the target loads with `dlopen`.
pub fn plugin() -> &'static str {
    dprobe_test_fixtures::c_program(
        &format!("{FIXTURES}/plugin.c"),
        "libdprobe_plugin.so",
        &["-O2", "-shared", "-fPIC"],
    )
}

/// A counter and a handler that increments it.
pub fn counter() -> (Arc<AtomicU64>, dprobe_ptrace::Handler) {
    let c = Arc::new(AtomicU64::new(0));
    let c2 = c.clone();
    (
        c,
        Box::new(move |_hit| {
            c2.fetch_add(1, Relaxed);
        }),
    )
}

/// The bytes at `addr` in process `pid`, read through its memory file (not the tracer).
pub fn read_mem(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(format!("/proc/{pid}/mem")).unwrap().read_exact_at(&mut b, addr).unwrap();
    b
}

/// The programs shared with the other crate's tests (each test binary uses some of them).
#[allow(unused_imports)]
pub use dprobe_test_fixtures::programs::{ctor_plugin, exits, family, loads, throws};

/// How a return probe watches returns, for tests that run in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Mode {
    /// At the function's exits (the default when they are all known).
    Exits,
    /// Through the return address, stopping on the trampoline.
    Trampoline,
    /// Through the return address, recorded by a stub without a stop.
    Stubs,
}

#[allow(dead_code)]
pub const MODES: [Mode; 3] = [Mode::Exits, Mode::Trampoline, Mode::Stubs];

/// `def` in mode `mode`.
#[allow(dead_code)]
pub fn in_mode(def: dprobe_ptrace::ProbeDef, mode: Mode) -> dprobe_ptrace::ProbeDef {
    match mode {
        Mode::Exits => def,
        Mode::Trampoline => def.via_return_address(),
        Mode::Stubs => def.via_return_address().no_return_stop(),
    }
}

/// Check that probe `id` of `t` watches its returns as `mode` says.
#[allow(dead_code)]
pub fn assert_mode(t: &dprobe_ptrace::Tracee, id: dprobe_core::ProbeId, mode: Mode) {
    let got = t.return_mode(id);
    let exits = matches!(got, Some(dprobe_ptrace::ReturnMode::Exits { .. }));
    assert_eq!(exits, mode == Mode::Exits, "{mode:?}: {got:?}");
}

/// The system call the main thread of `pid` is blocked in, if it is.
pub fn blocked_in(pid: u32) -> Option<i64> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    line.split_whitespace().next()?.parse().ok().filter(|n| *n >= 0)
}

/// A program whose only thread is nearly always inside the C library: prints "rounds N wrong
/// W traps T" once its standard input ends (W 0 and T 0 as untraced).
pub fn lives_in_the_c_library() -> &'static str {
    let src = format!("{FIXTURES}/lives_in_the_c_library.c");
    dprobe_test_fixtures::c_program(&src, "lives_in_the_c_library", &["-O2"])
}
