//! A branch from another function into the middle of a probed one: hand-written code does it
//! (glibc's `__mempcpy_*` ends with a jump to `__memmove_*+3`, past the `mov` that sets the
//! return value), and a jump written over such a target would send that branch into the middle
//! of the `jmp rel32`. The probe stays on `int3`, with the branch named, and every caller of
//! either function gets its results.
//!
//! Also here: what dprobe's own hit path calls is not counted as the program's. A probe on
//! `memset` sees the test's calls exactly; a handler that calls `memset` itself makes those
//! nested hits missed (the kernel's rule), and nothing else is.
mod fixtures;
use fixtures::{addr, call2, code};

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use dprobe_inproc::{register, Addr, Kprobe, NotOptimized, PreAction};

/// The libc tests probe the same functions: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

std::arch::global_asm!(
    ".text",
    // sum(a, b) = a + b; its second instruction has a local label, not a symbol.
    ".globl fxc_sum",
    ".type fxc_sum,@function",
    "fxc_sum:",
    "mov rax, rdi",
    ".Lfxc_sum_add:",
    "add rax, rsi",
    "ret",
    ".size fxc_sum, . - fxc_sum",
    // sum_plus(a, b) = a + 100 + b, sharing sum's tail as `__mempcpy_*` shares `__memmove_*`'s.
    ".globl fxc_sum_plus",
    ".type fxc_sum_plus,@function",
    "fxc_sum_plus:",
    "lea rax, [rdi + 100]",
    "jmp .Lfxc_sum_add",
    ".size fxc_sum_plus, . - fxc_sum_plus",
);

extern "C" {
    fn fxc_sum(a: u64, b: u64) -> u64;
    fn fxc_sum_plus(a: u64, b: u64) -> u64;
}

#[test]
fn a_branch_from_another_function_into_the_window_keeps_the_probe_on_int3() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let (sum, plus) = (addr(fxc_sum), addr(fxc_sum_plus));
    let original = code(sum, 7);
    assert_eq!(original, [0x48, 0x89, 0xf8, 0x48, 0x01, 0xf0, 0xc3], "fxc_sum as the test expects it");
    // The function alone allows the jump: nothing in it branches into its first 5 bytes.
    assert!(dprobe_arch::can_optimize(&original, sum, sum).is_ok(), "the function's own branches allow it");

    let probe = register(Kprobe::addr(sum).pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    match probe.optimized() {
        Err(NotOptimized::BranchIntoWindow { from, target, text }) => {
            // `lea rax, [rdi + 100]` is 4 bytes; the jmp after it lands on `add`.
            assert_eq!((from, target), (plus.offset(4), sum.offset(3)), "{text}");
            assert!(text.to_string().starts_with("jmp"), "the branch is named: {text}");
        }
        other => panic!("fxc_sum_plus jumps into the window: {other:?}"),
    }
    assert_eq!(code(sum, 1), [0xcc], "the entry stays on int3");
    for a in 0..50u64 {
        assert_eq!(call2(fxc_sum, a, 7), a + 7);
        assert_eq!(call2(fxc_sum_plus, a, 7), a + 107, "the branch into fxc_sum's middle still works");
    }
    assert_eq!(HITS.load(Relaxed), 50, "fxc_sum_plus does not pass through the probed entry");
    probe.unregister().unwrap();
    assert_eq!(code(sum, 7), original, "the bytes are back");
}

type CopyFn = unsafe extern "C" fn(*mut libc::c_void, *const libc::c_void, usize) -> *mut libc::c_void;
type FillFn = unsafe extern "C" fn(*mut libc::c_void, libc::c_int, usize) -> *mut libc::c_void;

const THREADS: usize = 4;
const CALLS: usize = 2_000;
const CHUNK: usize = 256;

/// The test's buffers: one chunk per thread; the probes count only calls writing there.
static BASE: AtomicU64 = AtomicU64::new(0);

fn ours(dst: u64) -> bool {
    let base = BASE.load(Relaxed);
    dst >= base && dst < base + (THREADS * CHUNK) as u64
}

fn buffers() -> u64 {
    let b: &'static mut [u8] = Box::leak(vec![0u8; THREADS * CHUNK].into_boxed_slice());
    b.as_mut_ptr() as u64
}

/// Each thread copies with `memcpy`, `memmove` and `mempcpy` (which, in glibc, jumps into
/// the middle of `memmove`'s implementation) into its own chunk, checking each result.
fn copy_calls(t: usize) {
    let memcpy: CopyFn = black_box(libc::memcpy);
    let memmove: CopyFn = black_box(libc::memmove);
    let mempcpy: CopyFn = black_box(libc::mempcpy);
    let dst = (BASE.load(Relaxed) as usize + t * CHUNK) as *mut u8;
    let src: Vec<u8> = (0..CHUNK).map(|i| (i * 13 + t) as u8).collect();
    for i in 0..CALLS {
        let n = 1 + i % 200;
        // SAFETY: each call writes at most n < CHUNK bytes of this thread's own chunk, from a
        // CHUNK-byte source.
        unsafe {
            memcpy(dst.cast(), src.as_ptr().cast(), n);
            assert_eq!(std::slice::from_raw_parts(dst, n), &src[..n], "memcpy of {n} bytes");
            memmove(dst.cast(), src[1..].as_ptr().cast(), n);
            assert_eq!(std::slice::from_raw_parts(dst, n), &src[1..=n], "memmove of {n} bytes");
            let end = mempcpy(dst.cast(), src[2..].as_ptr().cast(), n);
            assert_eq!(end as usize, dst as usize + n, "mempcpy returns the end");
            assert_eq!(std::slice::from_raw_parts(dst, n), &src[2..n + 2], "mempcpy of {n} bytes");
        }
    }
}

#[test]
fn memcpy_probed_where_a_jump_is_allowed_leaves_mempcpy_working() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    BASE.store(buffers(), Relaxed);
    let memcpy = libc::memcpy as *const () as usize;
    let memmove = libc::memmove as *const () as usize;
    let before = code(Addr(memcpy as u64), 16);
    // No `no_optimize`: the engine decides.
    let probe = register(Kprobe::symbol("memcpy").pre(|regs| {
        if ours(regs.rdi) {
            SEEN.fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(probe.addr(), Addr(memcpy as u64), "probed where the process's calls go");
    // Whether this C library's `mempcpy` branches into the first bytes of memcpy's
    // implementation (glibc's does, to skip the `mov` that sets the return value): then the
    // probe must stay on int3, naming that branch.
    let mempcpy = libc::mempcpy as *const () as u64;
    let mempcpy_code = code(Addr(mempcpy), 64);
    let into =
        dprobe_arch::CodeBranches::decode(&[(Addr(mempcpy), &mempcpy_code)], &[]).into_window(Addr(memcpy as u64));
    match (into, probe.optimized()) {
        // The first such branch of the library is named (`__mempcpy_chk`'s may come first).
        (Some(_), Err(NotOptimized::BranchIntoWindow { target, .. })) => {
            assert!(target > probe.addr() && target < probe.addr().offset(5), "{target}");
        }
        (Some(branch), other) => panic!("mempcpy branches into memcpy's window ({branch:?}): {other:?}"),
        (None, why) => eprintln!("this C library's mempcpy does not branch into memcpy: {why:?}"),
    }
    let threads: Vec<_> = (0..THREADS).map(|t| std::thread::spawn(move || copy_calls(t))).collect();
    for t in threads {
        t.join().unwrap();
    }
    let missed = probe.nmissed();
    probe.unregister().unwrap();
    // Where memcpy and memmove are one implementation, the probe sees both.
    let per_function = (THREADS * CALLS) as u64;
    let want = if memmove == memcpy { 2 * per_function } else { per_function };
    assert_eq!(SEEN.load(Relaxed), want, "the test's calls through the probed implementation");
    assert_eq!(missed, 0, "dprobe's own copies are not the program's calls");
    assert_eq!(code(Addr(memcpy as u64), 16), before, "the bytes are back");
}

#[test]
fn a_handlers_own_call_is_missed_and_dprobes_own_calls_count_nothing() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    static CALL_IN_HANDLER: AtomicU64 = AtomicU64::new(0);
    const N: u64 = 2_000;
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = buffers();
    BASE.store(base, Relaxed);
    let probe = register(Kprobe::symbol("memset").pre(|regs| {
        if ours(regs.rdi) {
            SEEN.fetch_add(1, Relaxed);
            if CALL_IN_HANDLER.load(Relaxed) == 1 {
                // A static, not a local array, whose zeroing the compiler may make a
                // `memset` call of its own.
                static SCRATCH: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
                // SAFETY: 32 bytes into the 32 bytes of SCRATCH, which only this test writes.
                unsafe { black_box(libc::memset as FillFn)(SCRATCH.as_ptr() as *mut libc::c_void, 7, black_box(32)) };
            }
        }
        PreAction::Continue
    }))
    .unwrap();
    let memset: FillFn = black_box(libc::memset);
    let fill = |value: i32| {
        for i in 0..N {
            let n = 1 + (i % 100) as usize;
            // SAFETY: n < CHUNK bytes of the test's buffer.
            unsafe { memset(base as *mut libc::c_void, value, n) };
        }
    };
    fill(1);
    let quiet = probe.nmissed();
    CALL_IN_HANDLER.store(1, Relaxed);
    fill(2);
    let after = probe.nmissed();
    probe.unregister().unwrap();
    assert_eq!(SEEN.load(Relaxed), 2 * N, "every call of the test seen once");
    assert_eq!(quiet, 0, "dprobe's hit path calls nothing the program is charged for");
    assert_eq!(after, N, "each memset the handler made itself is missed");
}
