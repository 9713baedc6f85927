//! Ten thousand probe targets for the registry-scale test and bench: generated functions of
//! two shapes (a window of one instruction, and one of two that needs the safepoint), and the
//! C library's own functions.
#![allow(dead_code)]

use dprobe_inproc::{Addr, Kprobe, PreAction, ProbeError};

/// How many functions are generated.
pub const GENERATED: usize = 10_000;

// `scale_fn_N(x)` returns `x + N`. Even ones start with a 5-byte nop (the jump replaces one
// instruction), odd ones with `mov rax, rdi; add rax, N` (it replaces two: the safepoint).
std::arch::global_asm!(
    ".altmacro",
    ".macro scale_fn n",
    ".globl scale_fn_\\n",
    ".type scale_fn_\\n,@function",
    ".p2align 4",
    "scale_fn_\\n:",
    ".if \\n % 2",
    "mov rax, rdi",
    "add rax, \\n",
    ".else",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + \\n]",
    ".endif",
    "ret",
    ".size scale_fn_\\n, . - scale_fn_\\n",
    ".endm",
    ".macro scale_ptr n",
    ".quad scale_fn_\\n",
    ".endm",
    ".text",
    ".set scale_i, 0",
    ".rept 10000",
    "scale_fn %scale_i",
    ".set scale_i, scale_i + 1",
    ".endr",
    ".pushsection .data.rel.ro.scale_table,\"aw\"",
    ".p2align 3",
    ".globl scale_table",
    "scale_table:",
    ".set scale_i, 0",
    ".rept 10000",
    "scale_ptr %scale_i",
    ".set scale_i, scale_i + 1",
    ".endr",
    ".popsection",
    ".noaltmacro",
);

/// A generated function: `f(x) == x + its index`.
pub type Generated = unsafe extern "C" fn(u64) -> u64;

extern "C" {
    static scale_table: [Generated; GENERATED];
}

/// The generated functions, in order.
pub fn generated() -> &'static [Generated; GENERATED] {
    // SAFETY: an immutable table of function pointers, filled in by the loader.
    unsafe { &scale_table }
}

/// Call generated function `i` with `x`, checking its result.
pub fn call(i: usize, x: u64) {
    // SAFETY: generated functions only add.
    let got = unsafe { std::hint::black_box(generated()[i])(std::hint::black_box(x)) };
    assert_eq!(got, x + i as u64, "scale_fn_{i}({x})");
}

/// Where generated function `i` starts.
pub fn addr(i: usize) -> Addr {
    Addr(generated()[i] as *const () as usize as u64)
}

/// C library functions that the test's own threads, the test harness and dprobe may all call
/// while they are probed, in symbol order: every exported function of libc, except those
/// that switch stacks or never return the ordinary way, whose probes the ordinary tests
/// cover one at a time (contexts, long jumps, `vfork` and `clone`, the exits).
pub fn libc_functions() -> Vec<(String, Addr)> {
    const LEFT_OUT: [&str; 14] = [
        "vfork",
        "fork",
        "clone",
        "getcontext",
        "setcontext",
        "swapcontext",
        "makecontext",
        "longjmp",
        "_longjmp",
        "siglongjmp",
        "exit",
        "_exit",
        "abort",
        "pthread_exit",
    ];
    let maps = dprobe_sym::read_maps().expect("maps");
    let symbols = dprobe_sym::Symbols::load(&maps);
    let mut seen = std::collections::BTreeSet::new();
    symbols
        .functions()
        .iter()
        .filter(|f| f.object.rsplit('/').next().is_some_and(|o| o.starts_with("libc.so")))
        .filter(|f| !f.name.starts_with('_') && !LEFT_OUT.contains(&&*f.name) && f.size >= 5)
        .filter(|f| seen.insert(f.start))
        .map(|f| (f.name.to_string(), f.start))
        .collect()
}

/// `n` probe targets: C library functions first (at most `libc` of them), then generated
/// functions; and the generated ones used, as indices.
pub fn targets(n: usize, libc: usize) -> (Vec<Addr>, std::ops::Range<usize>) {
    let mut out: Vec<Addr> = libc_functions().into_iter().take(libc.min(n)).map(|(_, a)| a).collect();
    let generated = 0..n - out.len();
    out.extend(generated.clone().map(addr));
    (out, generated)
}

/// Counting probes on `addrs`: the pre-handler only continues (the probe's own counters count).
pub fn probes(addrs: &[Addr]) -> Vec<Kprobe> {
    addrs.iter().map(|a| Kprobe::addr(*a).pre(|_| PreAction::Continue)).collect()
}

/// Drop from `addrs` the targets a batch refuses, one at a time, by the address its error
/// names; the targets left are all placeable. The refusals found.
pub fn placeable(addrs: &mut Vec<Addr>) -> Vec<ProbeError> {
    let mut refused = Vec::new();
    loop {
        match dprobe_inproc::register_all(probes(addrs)) {
            Ok(all) => {
                dprobe_inproc::unregister_all(all).expect("unregister");
                return refused;
            }
            Err(e) => {
                let named: std::collections::BTreeSet<u64> = e
                    .to_string()
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter_map(|w| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok())
                    .collect();
                let before = addrs.len();
                addrs.retain(|a| !named.contains(&a.0));
                assert!(addrs.len() < before, "a refusal that names none of the targets: {e}");
                refused.push(e);
            }
        }
    }
}
