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

/// A program that makes children in every way around calls of `work` (`family MODE N M`).
pub fn family() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/family.c"), "family", &["-O2", "-pthread"])
}

/// A program with constructors, linked with a library that has one (`loads ctors PLUGIN`), and
/// that loads and unloads a library again and again (`loads reload LIBRARY N`).
pub fn loads() -> &'static str {
    let lib = dprobe_test_fixtures::c_program(
        &format!("{FIXTURES}/ctorlib.c"),
        "libdprobe_ctor.so",
        &["-O2", "-shared", "-fPIC"],
    );
    let dir = std::path::Path::new(lib).parent().unwrap().to_str().unwrap();
    let (search, rpath) = (format!("-L{dir}"), format!("-Wl,-rpath,{dir}"));
    // Named before the source that uses it: kept without --as-needed.
    let flags = ["-O2", &search, &rpath, "-Wl,--no-as-needed", "-ldprobe_ctor", "-ldl"];
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/loads.c"), "loads", &flags)
}

/// A library whose constructor calls its `plugin_ctor_work` 4 times, loaded with `dlopen`.
pub fn ctor_plugin() -> &'static str {
    dprobe_test_fixtures::c_program(
        &format!("{FIXTURES}/ctorplugin.c"),
        "libdprobe_ctorplugin.so",
        &["-O2", "-shared", "-fPIC"],
    )
}

/// A C++ program that throws through `inner` and `middle` and catches in `outer`, every third
/// call (`throws N`).
pub fn throws() -> &'static str {
    // No cold clones (`inner.cold`): the functions stay whole.
    let flags = ["-O2", "-fno-reorder-blocks-and-partition", "-Wl,--no-as-needed", "-lstdc++"];
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/throws.cpp"), "throws", &flags)
}

/// Functions that leave by `exit`, `_exit`, `longjmp` and `pthread_exit` (`exits MODE N`).
pub fn exits() -> &'static str {
    dprobe_test_fixtures::c_program(&format!("{FIXTURES}/exits.c"), "exits", &["-O2", "-pthread"])
}
