//! The C and C++ programs of the ptrace and command-line tests (in `crates/ptrace/tests/fixtures`),
//! built once per test process; each source says what the program does and prints.

use crate::c_program;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ptrace/tests/fixtures");

/// A program that makes children in every way around calls of `work` (`family MODE N M`).
pub fn family() -> &'static str {
    c_program(&format!("{FIXTURES}/family.c"), "family", &["-O2", "-pthread"])
}

/// A program with constructors, linked with a library that has one (`loads ctors PLUGIN`), and
/// that loads and unloads a library again and again (`loads reload LIBRARY N`).
pub fn loads() -> &'static str {
    let lib = c_program(&format!("{FIXTURES}/ctorlib.c"), "libdprobe_ctor.so", &["-O2", "-shared", "-fPIC"]);
    let dir = std::path::Path::new(lib).parent().unwrap().to_str().unwrap();
    let (search, rpath) = (format!("-L{dir}"), format!("-Wl,-rpath,{dir}"));
    // Named before the source that uses it: kept without --as-needed.
    let flags = ["-O2", &search, &rpath, "-Wl,--no-as-needed", "-ldprobe_ctor", "-ldl"];
    c_program(&format!("{FIXTURES}/loads.c"), "loads", &flags)
}

/// A library whose constructor calls its `plugin_ctor_work` 4 times, loaded with `dlopen`.
pub fn ctor_plugin() -> &'static str {
    c_program(&format!("{FIXTURES}/ctorplugin.c"), "libdprobe_ctorplugin.so", &["-O2", "-shared", "-fPIC"])
}

/// A C++ program that throws through `inner` and `middle` and catches in `outer`, every third
/// call (`throws N`).
pub fn throws() -> &'static str {
    // No cold clones (`inner.cold`): the functions stay whole.
    let flags = ["-O2", "-fno-reorder-blocks-and-partition", "-Wl,--no-as-needed", "-lstdc++"];
    c_program(&format!("{FIXTURES}/throws.cpp"), "throws", &flags)
}

/// Functions that leave by `exit`, `_exit`, `longjmp` and `pthread_exit` (`exits MODE N`).
pub fn exits() -> &'static str {
    c_program(&format!("{FIXTURES}/exits.c"), "exits", &["-O2", "-pthread"])
}

/// Threads asleep in system calls, each woken by signals of its own signaller (`wakeups N P`;
/// driven by [`crate::wakeups::Wakeups`]).
pub fn wakeups() -> &'static str {
    c_program(&format!("{FIXTURES}/wakeups.c"), "wakeups", &["-O2", "-pthread"])
}
