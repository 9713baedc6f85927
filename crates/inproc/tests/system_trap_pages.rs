//! Another tool's kernel uprobe (`uprobe_events`, `perf probe -x`, bpftrace, `dprobe -a`) on an
//! in-process `int3` that shares its page with jump-optimized probes: a return probe's
//! one-byte `ret` exit next to its entry, another function's probe in the same page.
//!
//! The kernel places a uprobe in no writable mapping, but once the process has a uprobe
//! anywhere it looks every `int3` up by file and offset, writable mapping or not: an `int3` in
//! a page made writable for jumps, under a uprobe that went into no mapping, sends a hitting
//! thread back to it for as long as the uprobe is registered (it spins in the kernel), and
//! removing the uprobe writes the instruction copy it never made (a zero byte) over the
//! `int3`. While dprobe holds such a page writable it keeps a read-only alias of the file's
//! page mapped: the uprobe goes there, with its instruction read from the file; the kernel then
//! takes the hits of dprobe's `int3` at that offset (as in a page left `r-x`), and its removal,
//! which writes the file's byte back, is put right by `rearm_undone` and counted.
//!
//! Uses the system's tracefs: runs under the tracefs lock, as the other system tests.
mod fixtures;
use fixtures::{addr, call2, code};

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use dprobe_inproc::{register, register_kretprobe, Addr, Kprobe, Kretprobe, PreAction};

std::arch::global_asm!(
    ".text",
    // Two functions in a page of their own: each has room for a jump at its entry.
    ".p2align 12",
    ".globl fxt_jumped",
    ".type fxt_jumped,@function",
    "fxt_jumped:",
    "lea rax, [rdi + rsi + 0x100]",
    "ret",
    ".size fxt_jumped, . - fxt_jumped",
    // Its `ret` has no room for a jump of its own (the entry's covers the `lea`).
    ".globl fxt_returning",
    ".type fxt_returning,@function",
    "fxt_returning:",
    "lea rax, [rdi + rsi + 0x200]",
    "ret",
    ".size fxt_returning, . - fxt_returning",
    // Where the other tool's first uprobe goes: the process then has a uprobe somewhere.
    ".p2align 12",
    ".globl fxt_elsewhere",
    ".type fxt_elsewhere,@function",
    "fxt_elsewhere:",
    "lea rax, [rdi + rsi + 0x300]",
    "ret",
    ".size fxt_elsewhere, . - fxt_elsewhere",
    ".p2align 12",
);

extern "C" {
    fn fxt_jumped(a: u64, b: u64) -> u64;
    fn fxt_returning(a: u64, b: u64) -> u64;
    fn fxt_elsewhere(a: u64, b: u64) -> u64;
}

/// The kernel's tracing directory (mounted by [`tracing`] where no one did yet).
const TRACING: &str = "/sys/kernel/tracing";

/// Mount [`TRACING`] where nothing did yet: this test defines events there before dprobe ran.
fn tracing() {
    let _ = dprobe_test_fixtures::tracing_dir();
}
/// The other tool's event group, followed by the test process's ID.
const GROUP: &str = "dprobe_trap_pages_";

/// Remove the uprobes a run of this test that crashed left behind (its process is gone).
fn remove_stale() {
    tracing();
    let events = std::fs::read_to_string(format!("{TRACING}/uprobe_events")).unwrap();
    for line in events.lines() {
        let Some(event) = line.split_whitespace().next().and_then(|e| e.strip_prefix("p:")) else { continue };
        let Some((group, name)) = event.split_once('/') else { continue };
        let Some(pid) = group.strip_prefix(GROUP) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::write(format!("{TRACING}/events/{group}/{name}/enable"), "0");
            define(&format!("-:{group}/{name}"));
        }
    }
}

/// The mapping holding `at` in this process: its file, `at`'s offset there, its permissions.
fn mapping(at: Addr) -> (String, u64, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = f[0].split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        if (start..end).contains(&at.0) {
            let offset = at.0 - start + u64::from_str_radix(f[2], 16).unwrap();
            return (f[5].to_owned(), offset, f[1].to_owned());
        }
    }
    panic!("{at} is not mapped");
}

/// How many other mappings of the file holding `at` map its page (read-only aliases).
fn aliases(at: Addr) -> usize {
    let (file, offset, _) = mapping(at);
    let page = offset / 4096 * 4096;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[5] == file && f[1] == "r--p")
        .filter(|f| {
            let (start, end) = f[0].split_once('-').unwrap();
            let len = u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
            let from = u64::from_str_radix(f[2], 16).unwrap();
            (from..from + len).contains(&page)
        })
        .count()
}

fn define(line: &str) {
    tracing();
    let mut f = std::fs::OpenOptions::new().append(true).open(format!("{TRACING}/uprobe_events")).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
}

/// Another tool's uprobes on this test's own file, registered while the value lives.
struct OtherTool {
    group: String,
    events: Vec<(String, String)>,
}

impl OtherTool {
    /// Uprobes named `name` at each of `sites`, defined and enabled (registered). The names
    /// carry this process's ID: `uprobe_profile` does not show the group.
    fn add(sites: &[(&str, Addr)]) -> OtherTool {
        let pid = std::process::id();
        let group = format!("{GROUP}{pid}");
        let mut events = Vec::new();
        for (name, at) in sites {
            let (file, offset, _) = mapping(*at);
            let name = format!("{name}_{pid}");
            define(&format!("p:{group}/{name} {file}:{offset:#x}"));
            events.push((name, file));
        }
        let tool = OtherTool { group, events };
        for (name, _) in &tool.events {
            std::fs::write(format!("{TRACING}/events/{}/{name}/enable", tool.group), "1").unwrap();
        }
        tool
    }

    /// The kernel's hit count of uprobe `name`, from `uprobe_profile`.
    fn kernel_hits(&self, name: &str) -> u64 {
        let profile = std::fs::read_to_string(format!("{TRACING}/uprobe_profile")).unwrap();
        let name = format!("{name}_{}", std::process::id());
        let (_, file) = self.events.iter().find(|(n, _)| *n == name).unwrap();
        // `  PATH EVENT HITS`
        let line = profile
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([file.as_str(), name.as_str()]))
            .unwrap_or_else(|| panic!("{name} is listed:\n{profile}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    }
}

impl Drop for OtherTool {
    fn drop(&mut self) {
        for (name, _) in &self.events {
            let _ = std::fs::write(format!("{TRACING}/events/{}/{name}/enable", self.group), "0");
        }
        for (name, _) in &self.events {
            define(&format!("-:{}/{name}", self.group));
        }
    }
}

/// What thread `t` computes in one round of `calls` calls of both functions.
fn round(t: u64, calls: u64) -> u64 {
    (0..calls).map(|i| call2(fxt_jumped, i, t).wrapping_add(call2(fxt_returning, t, i))).fold(0, u64::wrapping_add)
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_an_int3_sharing_a_page_with_jumps() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 2000;
    // Rounds 1, 3 and 5 run with the other tool's uprobes registered.
    const ROUNDS: u64 = 6;
    static ENTRIES: AtomicU64 = AtomicU64::new(0);
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    remove_stale();
    let (jumped, returning) = (addr(fxt_jumped), addr(fxt_returning));
    let ret = returning.offset(8);
    assert_eq!(jumped.0 / 4096, returning.0 / 4096, "one page");
    assert_eq!(code(ret, 1), [0xc3]);
    let original = code(jumped, (4096 - jumped.0 % 4096) as usize);
    // The program's own result, untraced.
    let untraced: Vec<u64> =
        (0..THREADS).map(|t| (0..ROUNDS).map(|_| round(t, CALLS)).fold(0, u64::wrapping_add)).collect();

    let entry = register(Kprobe::addr(jumped).pre(|_| {
        ENTRIES.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let returns = register_kretprobe(Kretprobe::addr(returning).handler(|r, _| {
        assert!(r.rax >= 0x200);
        RETURNS.fetch_add(1, Relaxed);
    }))
    .unwrap();
    assert_eq!(code(ret, 1), [0xcc], "the exit's int3");
    assert_eq!((entry.optimized(), code(jumped, 1)), (Ok(()), vec![0xe9]), "the entry's jump");
    assert_eq!(mapping(ret).2, "rwxp", "the page under the jump is writable");

    // Four threads, round after round; between rounds the other tool's uprobes come or go.
    let start = Arc::new(Barrier::new(THREADS as usize + 1));
    let done = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                let mut sum = 0u64;
                for _ in 0..ROUNDS {
                    start.wait();
                    sum = sum.wrapping_add(round(t, CALLS));
                    *done.lock().unwrap() += 1;
                }
                sum
            })
        })
        .collect();
    let mut other = None;
    let (mut kernel_rets, mut kernel_elsewhere, mut rearmed) = (0, 0, 0);
    for r in 0..ROUNDS {
        if r % 2 == 1 {
            other = Some(OtherTool::add(&[("elsewhere", addr(fxt_elsewhere)), ("ret", ret)]));
            assert_eq!(call2(fxt_elsewhere, 1, 2), 0x303);
        }
        start.wait();
        // The deadline only keeps a broken run (threads spinning in the kernel) from hanging.
        let deadline = Instant::now() + Duration::from_secs(120);
        while *done.lock().unwrap() < (r + 1) * THREADS {
            if Instant::now() > deadline {
                drop(other.take());
                panic!(
                    "round {r} did not end: threads spin on the int3; the uprobe's removal left {:02x?}",
                    code(ret, 1)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(tool) = other.take() {
            kernel_rets += tool.kernel_hits("ret");
            kernel_elsewhere += tool.kernel_hits("elsewhere");
            // Removing the uprobe writes the file's byte over dprobe's int3.
            drop(tool);
            assert_eq!(code(ret, 1), [0xc3], "the uprobe's removal wrote the file's byte back");
            rearmed += dprobe_inproc::rearm_undone();
            assert_eq!(code(ret, 1), [0xcc], "dprobe's int3 back");
        }
    }
    assert_eq!(aliases(ret), 1, "a read-only alias of the writable page's file page");
    let sums: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(sums, untraced, "the program's own results");

    let calls = THREADS * CALLS * ROUNDS;
    let with_uprobe = THREADS * CALLS * (ROUNDS / 2);
    assert_eq!(kernel_elsewhere, ROUNDS / 2, "the other tool's first uprobe fired");
    assert_eq!(kernel_rets, with_uprobe, "the kernel took the exit's hits while its uprobe was there");
    assert_eq!(ENTRIES.load(Relaxed), calls, "every entry seen");
    assert_eq!(entry.hits(), calls);
    let stats = returns.stats();
    assert_eq!(stats.hits, calls, "every entry of the return probe seen");
    assert_eq!(stats.returns, calls - with_uprobe, "every return the kernel did not take");
    assert_eq!(RETURNS.load(Relaxed), calls - with_uprobe);
    assert_eq!((rearmed, stats.rearmed), (ROUNDS as usize / 2, ROUNDS / 2), "each removal put right and counted");
    drop(entry);
    drop(returns);
    assert_eq!(code(jumped, original.len()), original, "the page's bytes as they were");
    assert_eq!(mapping(ret).2, "r-xp");
    assert_eq!(aliases(ret), 0, "the alias unmapped");
}
