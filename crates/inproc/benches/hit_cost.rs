//! Per-hit cost of dprobe's in-process paths against the raw `int3` -> `SIGTRAP` -> return
//! round trip, measured in the same run.
//!
//! `cargo bench -p dprobe-inproc --bench hit_cost` prints criterion's figures for each path,
//! then a table of medians (and fastest rounds) over interleaved rounds with the ratio to the
//! floor, then the jump-optimized entry against the plain call in short alternating rounds.
//!
//! * floor: a function that starts with `int3`, under a `SIGTRAP` handler that only returns
//!   (the cheapest possible trap round trip; installed only while it is measured);
//! * emulated: probe on `push %rbp` (emulated in the handler, one trap; registered with
//!   `no_optimize`, since its window would make it a jump);
//! * boosted: probe on `mov %rdi,%rax` (copy + jump back, one trap);
//! * post-step: the same with a post-handler (copy + a second trap);
//! * kretprobe: a return probe through the return address on a function starting with the
//!   same `mov`: its entry is the boosted kprobe;
//! * kretprobe entry only: the same with an entry handler that vetoes every call: all the
//!   entry's bookkeeping, no return through the trampoline. The difference between the two
//!   kretprobe rows is the return side;
//! * kretprobe at its exits: the same function, its returns watched at its `ret` (a probe
//!   there, on int3: a one-byte `ret` at the end of a function leaves no room for a jump);
//! * plain call: a function starting with a 5-byte nop and no probe;
//! * jump-optimized: a probe on that nop, which becomes a jump to a detour (no trap);
//! * the same probe on int3: the same function and probe, registered with `no_optimize`;
//! * jump + post-handler: a probe with a pre- and a post-handler on the same nop, whose detour
//!   runs the post-handler after the relocated nop (the trap path's post-step takes two traps);
//! * jump inside a function: a probe on a 5-byte nop after the function's first instruction,
//!   whose detour also keeps the whole extended state (on a CPU with AVX: without `XSAVE` where
//!   the state is x87, SSE and AVX and x87 is unused, with it elsewhere);
//! * kretprobe, jump entry + exit probe: the same function watched at its exits: the entry is a
//!   jump, the one-byte `ret` an int3 probe (the instructions before it, with the entry's
//!   window, are too few for an exit window that does not overlap it);
//! * jump at a ret: a counting probe on a `ret` whose exit window (`mov %rdi,%rax`, a 2-byte
//!   nop, the `ret`) is a jump placed before it;
//! * kretprobe, jump entry + exit jump: a return probe on that function, whose entry (the
//!   5-byte nop) and exit (through that window) are both jumps;
//! * the same, vetoed: its entry handler vetoes every call (the entry's bookkeeping and the
//!   exit's jump, which then finds no activation): the difference to the row above is the
//!   return side;
//! * jump at a tail call: a counting probe on a function's last instruction, a `jmp` to
//!   another function (a 5-byte nop, then `jmp rel32`): its detour keeps what an entry's does,
//!   not the whole extended state;
//! * jump inside, x87 in use: the same as "jump inside a function" after x87 arithmetic (1.0
//!   pushed and popped before the probe: its stack empty, a register's bits and the last
//!   instruction left behind): x87 is kept too (on a thread of its own each round);
//! * jump inside, after a signal: the same as "jump inside a function", on a thread of its own
//!   each round that first takes a program's signal (the kernel's signal frame marks x87 in
//!   use, in its initial state; dprobe's traps leave it unused in the other rows' thread);
//! * jump inside, zmm0-15 in use: the same with `a` in every lane of `zmm2` across the probe
//!   (`vpbroadcastq` before it, `vzeroupper` after; on a CPU with AVX-512 only);
//! * jump, handler's float flag: a function that clears `MXCSR`'s exception flags, then
//!   tail-calls one probed at its entry (a jump) whose handler also makes an inexact division:
//!   the stub loads the program's `MXCSR` back, without the precision flag the handler raised;
//! * jump, handler's locked add: the jump-optimized row's probe on a copy of its function, its
//!   handler counting with a locked add (`fetch_add`) instead.
//!
//! Every handler counts its hits as a C callback's `hits++` does (Frida's, in `frida_peer`):
//! a load and a store of a counter one thread writes (`count`). A locked add instead costs a
//! jump's hit 8-9 ns more on the Intel Xeon of BENCHMARKS.md (the last row: it waits for the
//! stub's stores to drain), where a C loop calling a function that does one takes 9.0 ns a
//! call against 5.3-6.8 with a plain add.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dprobe_inproc::{register, register_kretprobe, EntryAction, Kprobe, Kretprobe, PreAction, Probe, ReturnProbe};

std::arch::global_asm!(
    ".text",
    ".globl bench_floor",
    ".type bench_floor,@function",
    "bench_floor:",
    "int3",
    "mov rax, rdi",
    "ret",
    ".size bench_floor, . - bench_floor",
    ".globl bench_push",
    ".type bench_push,@function",
    "bench_push:",
    "push rbp",
    "mov rax, rdi",
    "pop rbp",
    "ret",
    ".size bench_push, . - bench_push",
    ".globl bench_mov",
    ".type bench_mov,@function",
    "bench_mov:",
    "mov rax, rdi",
    "ret",
    ".size bench_mov, . - bench_mov",
    ".globl bench_ret",
    ".type bench_ret,@function",
    "bench_ret:",
    "mov rax, rdi",
    "ret",
    ".size bench_ret, . - bench_ret",
    ".globl bench_exit",
    ".type bench_exit,@function",
    "bench_exit:",
    "mov rax, rdi",
    "ret",
    ".size bench_exit, . - bench_exit",
    ".globl bench_veto",
    ".type bench_veto,@function",
    "bench_veto:",
    "mov rax, rdi",
    "ret",
    ".size bench_veto, . - bench_veto",
    ".globl bench_post",
    ".type bench_post,@function",
    "bench_post:",
    "mov rax, rdi",
    "ret",
    ".size bench_post, . - bench_post",
    ".globl bench_plain",
    ".type bench_plain,@function",
    "bench_plain:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_plain, . - bench_plain",
    ".globl bench_jump",
    ".type bench_jump,@function",
    "bench_jump:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump, . - bench_jump",
    ".globl bench_jump_locked",
    ".type bench_jump_locked,@function",
    "bench_jump_locked:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_locked, . - bench_jump_locked",
    ".globl bench_jump_int3",
    ".type bench_jump_int3,@function",
    "bench_jump_int3:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_int3, . - bench_jump_int3",
    ".globl bench_jump_post",
    ".type bench_jump_post,@function",
    "bench_jump_post:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_post, . - bench_jump_post",
    ".globl bench_jump_inner",
    ".type bench_jump_inner,@function",
    "bench_jump_inner:",
    "mov rax, rdi",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "ret",
    ".size bench_jump_inner, . - bench_jump_inner",
    ".globl bench_jump_signalled",
    ".type bench_jump_signalled,@function",
    "bench_jump_signalled:",
    "mov rax, rdi",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "ret",
    ".size bench_jump_signalled, . - bench_jump_signalled",
    ".globl bench_jump_zmm",
    ".type bench_jump_zmm,@function",
    "bench_jump_zmm:",
    "vpbroadcastq zmm2, rdi",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "vzeroupper",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_zmm, . - bench_jump_zmm",
    ".globl bench_jump_x87",
    ".type bench_jump_x87,@function",
    "bench_jump_x87:",
    "fld1",
    "fstp st(0)",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_x87, . - bench_jump_x87",
    ".globl bench_jump_exits",
    ".type bench_jump_exits,@function",
    "bench_jump_exits:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_jump_exits, . - bench_jump_exits",
    ".globl bench_ret_jump",
    ".type bench_ret_jump,@function",
    "bench_ret_jump:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size bench_ret_jump, . - bench_ret_jump",
    ".globl bench_kret_jumps",
    ".type bench_kret_jumps,@function",
    "bench_kret_jumps:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size bench_kret_jumps, . - bench_kret_jumps",
    ".globl bench_kret_jumps_veto",
    ".type bench_kret_jumps_veto,@function",
    "bench_kret_jumps_veto:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    ".byte 0x66, 0x90",
    "ret",
    ".size bench_kret_jumps_veto, . - bench_kret_jumps_veto",
    ".globl bench_tail",
    ".type bench_tail,@function",
    "bench_tail:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    ".byte 0xe9",
    ".long bench_tail_callee - . - 4",
    ".size bench_tail, . - bench_tail",
    ".globl bench_tail_callee",
    ".type bench_tail_callee,@function",
    "bench_tail_callee:",
    "mov rax, rdi",
    "ret",
    ".size bench_tail_callee, . - bench_tail_callee",
    ".globl bench_float_flag",
    ".type bench_float_flag,@function",
    "bench_float_flag:",
    "sub rsp, 8",
    "mov dword ptr [rsp], 0x1f80",
    "ldmxcsr [rsp]",
    "add rsp, 8",
    "jmp bench_float_leaf",
    ".size bench_float_flag, . - bench_float_flag",
    ".globl bench_float_leaf",
    ".type bench_float_leaf,@function",
    "bench_float_leaf:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "mov rax, rdi",
    "ret",
    ".size bench_float_leaf, . - bench_float_leaf",
);

extern "C" {
    fn bench_floor(x: u64) -> u64;
    fn bench_push(x: u64) -> u64;
    fn bench_mov(x: u64) -> u64;
    fn bench_post(x: u64) -> u64;
    fn bench_ret(x: u64) -> u64;
    fn bench_veto(x: u64) -> u64;
    fn bench_exit(x: u64) -> u64;
    fn bench_plain(x: u64) -> u64;
    fn bench_jump(x: u64) -> u64;
    fn bench_jump_int3(x: u64) -> u64;
    fn bench_jump_locked(x: u64) -> u64;
    fn bench_jump_post(x: u64) -> u64;
    fn bench_jump_inner(x: u64) -> u64;
    fn bench_jump_x87(x: u64) -> u64;
    fn bench_jump_signalled(x: u64) -> u64;
    fn bench_jump_zmm(x: u64) -> u64;
    fn bench_jump_exits(x: u64) -> u64;
    fn bench_ret_jump(x: u64) -> u64;
    fn bench_kret_jumps(x: u64) -> u64;
    fn bench_kret_jumps_veto(x: u64) -> u64;
    fn bench_tail(x: u64) -> u64;
    fn bench_float_flag(x: u64) -> u64;
    fn bench_float_leaf(x: u64) -> u64;
}

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn floor_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    HITS.fetch_add(1, Relaxed);
}

/// Runs `f` with the floor's own SIGTRAP handler, then puts back dprobe's.
fn with_floor_handler<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: swapping SIGTRAP dispositions on a benchmark process; dprobe's action is saved
    // and restored before any probe is hit again.
    unsafe {
        let mut floor: libc::sigaction = std::mem::zeroed();
        floor.sa_sigaction = floor_handler as *const () as usize;
        floor.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        let mut saved: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGTRAP, &floor, &mut saved);
        let r = f();
        libc::sigaction(libc::SIGTRAP, &saved, std::ptr::null_mut());
        r
    }
}

/// One more hit, as a C callback's `hits++` counts: a load and a store (the bench's hits are
/// all on one thread at a time).
fn bump() {
    HITS.store(HITS.load(Relaxed) + 1, Relaxed);
}

fn count(_: &mut dprobe_inproc::Regs) -> PreAction {
    bump();
    PreAction::Continue
}

fn probes() -> (Vec<Probe>, Vec<ReturnProbe>) {
    let at = |f: unsafe extern "C" fn(u64) -> u64| dprobe_inproc::Addr(f as *const () as usize as u64);
    let kprobes = vec![
        register(Kprobe::addr(at(bench_push)).pre(count).no_optimize()).expect("emulated probe"),
        register(Kprobe::addr(at(bench_mov)).pre(count)).expect("boosted probe"),
        register(Kprobe::addr(at(bench_post)).pre(count).post(|_| {})).expect("post-step probe"),
        register(Kprobe::addr(at(bench_jump)).pre(count)).expect("jump-optimized probe"),
        register(Kprobe::addr(at(bench_jump_int3)).pre(count).no_optimize()).expect("the same on int3"),
        register(Kprobe::addr(at(bench_jump_post)).pre(count).post(|_| {
            bump();
        }))
        .expect("jump with a post-handler"),
        register(Kprobe::addr(at(bench_jump_inner).offset(3)).pre(count)).expect("jump inside a function"),
        register(Kprobe::addr(at(bench_ret_jump).offset(10)).pre(count)).expect("jump at a ret"),
        register(Kprobe::addr(at(bench_tail).offset(5)).pre(count)).expect("jump at a tail call"),
        register(Kprobe::addr(at(bench_jump_x87).offset(4)).pre(count)).expect("jump inside a function, x87 in use"),
        register(Kprobe::addr(at(bench_jump_signalled).offset(3)).pre(count)).expect("jump inside, after a signal"),
        register(Kprobe::addr(at(bench_jump_zmm).offset(6)).pre(count)).expect("jump inside, zmm0-zmm15 in use"),
        register(Kprobe::addr(at(bench_float_leaf)).pre(|regs| {
            // An inexact division: MXCSR's precision flag, which the function cleared.
            black_box(black_box(1.0f64) / black_box(3.0f64));
            count(regs)
        }))
        .expect("jump, a handler's float flag"),
        register(Kprobe::addr(at(bench_jump_locked)).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .expect("jump, a handler's locked add"),
    ];
    assert_eq!(kprobes[3].optimized(), Ok(()), "the jump-optimized row measures a jump");
    assert_eq!(kprobes[5].optimized(), Ok(()), "the post row measures a jump");
    assert_eq!(kprobes[6].optimized(), Ok(()), "the inner row measures a jump");
    assert_eq!(kprobes[7].optimized(), Ok(()), "the ret row measures a jump");
    assert_eq!(kprobes[8].optimized(), Ok(()), "the tail call row measures a jump");
    assert_eq!(kprobes[9].optimized(), Ok(()), "the x87 row measures a jump");
    assert_eq!(kprobes[10].optimized(), Ok(()), "the signalled row measures a jump");
    assert_eq!(kprobes[11].optimized(), Ok(()), "the zmm row measures a jump");
    assert_eq!(kprobes[12].optimized(), Ok(()), "the float flag row measures a jump");
    assert_eq!(kprobes[13].optimized(), Ok(()), "the locked add row measures a jump");
    // The same first instruction as the boosted kprobe's function: the difference between
    // the two is the return side (trampoline, dispatcher, handler).
    let kret = register_kretprobe(Kretprobe::addr(at(bench_ret)).via_return_address().handler(|_, _| {
        bump();
    }))
    .expect("return probe");
    // The same again, but the entry handler vetoes every call: all of the entry's work,
    // no return through the trampoline.
    let vetoed = register_kretprobe(
        Kretprobe::addr(at(bench_veto)).via_return_address().entry_handler(|_, _| EntryAction::Skip).handler(|_, _| {
            bump();
        }),
    )
    .expect("vetoed return probe");
    let at_exits = register_kretprobe(Kretprobe::addr(at(bench_exit)).handler(|_, _| {
        bump();
    }))
    .expect("return probe at the exits");
    assert!(matches!(at_exits.return_mode(), dprobe_inproc::ReturnMode::Exits { sites: 1 }));
    let jump_exits = register_kretprobe(Kretprobe::addr(at(bench_jump_exits)).handler(|_, _| {
        bump();
    }))
    .expect("return probe at the exits with a jump entry");
    let entry = dprobe_inproc::list().into_iter().find(|i| i.addr == at(bench_jump_exits)).map(|i| i.jump);
    assert_eq!(entry, Some(Ok(())), "the entry of the return probe at the exits is a jump");
    let exit = dprobe_inproc::list().into_iter().find(|i| i.addr == at(bench_jump_exits).offset(8)).map(|i| i.jump);
    assert!(exit.is_some_and(|j| j.is_err()), "the exit int3 row's ret stays on int3");
    let jumps = register_kretprobe(Kretprobe::addr(at(bench_kret_jumps)).handler(|_, _| {
        bump();
    }))
    .expect("return probe with a jump entry and exit");
    let jump = |a| dprobe_inproc::list().into_iter().find(|i| i.addr == a).map(|i| i.jump);
    let (f, ret) = (at(bench_kret_jumps), at(bench_kret_jumps).offset(10));
    assert_eq!((jump(f), jump(ret)), (Some(Ok(())), Some(Ok(()))), "both sides of the return probe are jumps");
    let jumps_vetoed = register_kretprobe(
        Kretprobe::addr(at(bench_kret_jumps_veto)).entry_handler(|_, _| EntryAction::Skip).handler(|_, _| {
            bump();
        }),
    )
    .expect("vetoed return probe with a jump entry and exit");
    let (f, ret) = (at(bench_kret_jumps_veto), at(bench_kret_jumps_veto).offset(10));
    assert_eq!((jump(f), jump(ret)), (Some(Ok(())), Some(Ok(()))), "both sides of the vetoed one are jumps");
    (kprobes, vec![kret, vetoed, at_exits, jump_exits, jumps, jumps_vetoed])
}

type Target = (&'static str, unsafe extern "C" fn(u64) -> u64);
const TARGETS: [Target; 22] = [
    ("floor (raw int3 round trip)", bench_floor),
    ("emulated", bench_push),
    ("boosted", bench_mov),
    ("post-step", bench_post),
    ("kretprobe (entry + return)", bench_ret),
    ("kretprobe entry only (vetoed)", bench_veto),
    ("plain call (no probe)", bench_plain),
    ("jump-optimized", bench_jump),
    ("same probe on int3", bench_jump_int3),
    ("kretprobe at its exits", bench_exit),
    ("jump + post-handler", bench_jump_post),
    ("jump inside a function", bench_jump_inner),
    ("kret: jump entry + exit int3", bench_jump_exits),
    ("jump at a ret", bench_ret_jump),
    ("kret: jump entry + exit jump", bench_kret_jumps),
    ("kret: jumps, entry vetoed", bench_kret_jumps_veto),
    ("jump at a tail call", bench_tail),
    ("jump inside, x87 in use", bench_jump_x87),
    ("jump inside, after a signal", bench_jump_signalled),
    ("jump inside, zmm0-15 in use", bench_jump_zmm),
    ("jump, handler's float flag", bench_float_flag),
    ("jump, handler's locked add", bench_jump_locked),
];

fn call_n(f: unsafe extern "C" fn(u64) -> u64, n: u64) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: the bench functions return their argument.
        black_box(unsafe { black_box(f)(black_box(i)) });
    }
    t.elapsed()
}

fn measure(name: &str, f: unsafe extern "C" fn(u64) -> u64, n: u64) -> Duration {
    if name.contains("zmm") && !std::arch::is_x86_feature_detected!("avx512f") {
        // Its function's first instruction is AVX-512's: the row reads 0.
        return Duration::ZERO;
    }
    if name.starts_with("floor") {
        with_floor_handler(|| call_n(f, n))
    } else if name.contains("x87") {
        // On a thread of its own: the bits it leaves in an x87 register would put every
        // other row's thread on the path that keeps x87.
        std::thread::scope(|s| s.spawn(|| call_n(f, n)).join().expect("the x87 round"))
    } else if name.contains("signal") {
        // On a thread of its own that first takes a program's signal, whose frame marks x87
        // in use (dprobe's traps, in the other rows' thread, leave it unused).
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: the floor's handler, which only counts, for SIGUSR1 (nothing else in
                // the bench uses it), then SIGUSR1 sent to this thread.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = floor_handler as *const () as usize;
                    action.sa_flags = libc::SA_SIGINFO;
                    libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
                    libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1);
                }
                call_n(f, n)
            })
            .join()
            .expect("the signalled round")
        })
    } else {
        call_n(f, n)
    }
}

fn criterion_paths(c: &mut Criterion) {
    let _probes = probes();
    let mut g = c.benchmark_group("inproc hit");
    for (name, f) in TARGETS {
        g.bench_function(name, |b| b.iter_custom(|n| measure(name, f, n)));
    }
    g.finish();
}

/// Interleaved rounds, so drift on a shared machine hits every path alike; medians and ratios,
/// and each path's fastest round: on a host whose speed changes for whole seconds (a virtual
/// machine beside busy neighbours: the same binary's jump path has read 32 and 60 ns minutes
/// apart), the fastest round is the cost when nothing slowed the machine down.
fn ratio_table(_: &mut Criterion) {
    let _probes = probes();
    const ROUNDS: usize = 41;
    const N: u64 = 20_000;
    let mut samples = vec![Vec::new(); TARGETS.len()];
    for _ in 0..ROUNDS {
        for (k, (name, f)) in TARGETS.iter().enumerate() {
            samples[k].push(measure(name, *f, N).as_nanos() as f64 / N as f64);
        }
    }
    for v in &mut samples {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let medians: Vec<f64> = samples.iter().map(|v| v[v.len() / 2]).collect();
    let fastest: Vec<f64> = samples.iter().map(|v| v[0]).collect();
    println!("\nper-hit cost over {ROUNDS} interleaved rounds of {N} calls (median, and fastest round):");
    println!("{:<30} {:>10} {:>10} {:>10}", "path", "ns/hit", "x floor", "fastest");
    for (((name, _), m), f) in TARGETS.iter().zip(&medians).zip(&fastest) {
        println!("{:<30} {:>10.0} {:>10.2} {:>10.1}", name, m, m / medians[0], f);
    }
    let both = |what: &str, a: usize, b: usize| {
        println!("{what}: {:.1} ns (fastest rounds: {:.1} ns)", medians[a] - medians[b], fastest[a] - fastest[b]);
    };
    both("kretprobe entry bookkeeping (vetoed entry - boosted kprobe)", 5, 2);
    both("kretprobe return side (entry + return - vetoed entry)", 4, 5);
    both("kretprobe return side at the exit (at its exits - vetoed entry)", 9, 5);
    both("jump-optimized hit (jump-optimized - plain call)", 7, 6);
    println!("int3 / jump-optimized: {:.0}x", medians[8] / medians[7]);
    both("post-handler through the jump (jump + post - jump-optimized)", 10, 7);
    both("whole extended state (jump inside a function - jump-optimized)", 11, 7);
    both("return side on a jump entry, exit int3 (kret at exits - jump-optimized)", 12, 7);
    both("jump at a ret (jump at a ret - plain call)", 13, 6);
    both("return probe through both jumps over the entry jump (kret jump entry + exit jump - jump-optimized)", 14, 7);
    both("return side through an exit jump (kret jump entry + exit jump - the same vetoed)", 14, 15);
    both("jump at a tail call (jump at a tail call - plain call)", 16, 6);
    both("x87 in use (jump inside, x87 in use - jump inside a function)", 17, 11);
    both("after a program's signal (jump inside, after a signal - jump inside a function)", 18, 11);
    both("zmm0-zmm15's upper halves in use (jump inside, zmm0-15 in use - jump inside a function)", 19, 11);
    both("a handler's float flag put back (jump, handler's float flag - jump-optimized)", 20, 7);
    both("a handler's locked add (jump, handler's locked add - jump-optimized)", 21, 7);
    jump_pairs();
}

/// The jump-optimized entry against the plain call alone, in short rounds that alternate the
/// two: a round of the table above takes long enough to span a slow spell of the host, a
/// round here does not.
fn jump_pairs() {
    const ROUNDS: usize = 201;
    const N: u64 = 5_000;
    let mut hit: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let plain = call_n(bench_plain, N).as_nanos() as f64;
            (call_n(bench_jump, N).as_nanos() as f64 - plain) / N as f64
        })
        .collect();
    hit.sort_by(|a, b| a.total_cmp(b));
    let at = |q: usize| hit[(ROUNDS - 1) * q / 100];
    println!(
        "jump-optimized hit in {ROUNDS} alternating rounds of {N} calls, over the plain call: fastest {:.1} ns, 10th percentile {:.1} ns, median {:.1} ns",
        at(0),
        at(10),
        at(50)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = criterion_paths, ratio_table
}
criterion_main!(benches);
