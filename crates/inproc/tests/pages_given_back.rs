//! A code page held writable under a jump is given back as the file's own page once the last
//! jump there goes: `/proc/self/maps` reads as before the probe, line for line, and the page
//! is the page cache's again, not a private copy. A page that still holds a probe's `int3`
//! keeps its bytes (only its protection is given back), as does another page of the same code
//! where another tool wrote a breakpoint.
//!
//! One test function: every step reads the maps of this process, which the others would
//! change under it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Addr, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    // Both in one 64-byte block: the same page.
    ".p2align 6",
    ".globl fxg_jumped",
    ".type fxg_jumped,@function",
    "fxg_jumped:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxg_jumped, . - fxg_jumped",
    ".globl fxg_trapped",
    ".type fxg_trapped,@function",
    "fxg_trapped:",
    "lea rax, [rdi + rsi + 0x2000]",
    "ret",
    ".size fxg_trapped, . - fxg_trapped",
    // Never called: in a page of its own, where another tool writes a breakpoint.
    ".p2align 12",
    ".globl fxg_elsewhere",
    ".type fxg_elsewhere,@function",
    "fxg_elsewhere:",
    "lea rax, [rdi + rsi + 0x3000]",
    "ret",
    ".size fxg_elsewhere, . - fxg_elsewhere",
);

extern "C" {
    fn fxg_jumped(a: u64, b: u64) -> u64;
    fn fxg_trapped(a: u64, b: u64) -> u64;
    fn fxg_elsewhere(a: u64, b: u64) -> u64;
}

fn call(f: unsafe extern "C" fn(u64, u64) -> u64, a: u64, b: u64) -> u64 {
    // SAFETY: both fixtures only add their register arguments.
    unsafe { std::hint::black_box(f)(std::hint::black_box(a), std::hint::black_box(b)) }
}

fn addr_of(f: unsafe extern "C" fn(u64, u64) -> u64) -> Addr {
    Addr(f as usize as u64)
}

/// The lines of `/proc/self/maps` of the file mapped at `at`.
fn lines_of_file_at(at: Addr) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let holds = |l: &&str| {
        let (s, e) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
        (u64::from_str_radix(s, 16).unwrap()..u64::from_str_radix(e, 16).unwrap()).contains(&at.0)
    };
    let line = maps.lines().find(holds).expect("mapped");
    let inode = line.split_whitespace().nth(4).unwrap().to_owned();
    maps.lines().filter(|l| l.split_whitespace().nth(4) == Some(&inode)).map(str::to_owned).collect()
}

/// Whether the page holding `at` is a page of its file (the page cache's, `PM_FILE` in
/// `/proc/self/pagemap`), not a private copy.
fn file_page(at: Addr) -> bool {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut entry = [0u8; 8];
    pagemap.read_exact_at(&mut entry, at.0 / 4096 * 8).unwrap();
    let entry = u64::from_le_bytes(entry);
    assert!(entry & (1 << 63) != 0, "the page at {at} is present (it was just run)");
    entry & (1 << 61) != 0
}

/// Write `bytes` at `at` as another tool would (through `/proc/self/mem`).
fn poke(at: Addr, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem").unwrap();
    mem.write_all_at(bytes, at.0).unwrap();
}

fn first_bytes(a: Addr) -> Vec<u8> {
    // SAFETY: the fixtures are mapped code at least 8 bytes long.
    (0..8).map(|i| unsafe { std::ptr::read_volatile((a.0 + i) as *const u8) }).collect()
}

#[test]
fn the_last_jump_of_a_page_gives_the_file_page_back() {
    let (jumped, trapped) = (addr_of(fxg_jumped), addr_of(fxg_trapped));
    assert_eq!(jumped.0 / 4096, trapped.0 / 4096, "the fixtures share a page");
    assert_eq!(call(fxg_jumped, 1, 2), 0x1003);
    let (maps_before, code_before) = (lines_of_file_at(jumped), first_bytes(jumped));
    assert!(file_page(jumped), "the test binary's code is the file's before any probe");

    // Placed and removed again and again, while four threads call the function: every call
    // returns its sum, each hit is counted, and after each removal the maps are as before.
    static HITS: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    /// Stops the callers however the scope's body ends (a failed assertion too).
    struct StopOnDrop;
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            STOP.store(true, Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop;
        for t in 0..4u64 {
            s.spawn(move || {
                while !STOP.load(Relaxed) {
                    for _ in 0..1000 {
                        if call(fxg_jumped, t, 7) != t + 7 + 0x1000 {
                            WRONG.fetch_add(1, Relaxed);
                        }
                    }
                    CALLS.fetch_add(1000, Relaxed);
                    // Room for the registrar on a machine of two cores.
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            });
        }
        for round in 0..30 {
            let probe = register(Kprobe::addr(jumped).pre(|_| {
                HITS.fetch_add(1, Relaxed);
                PreAction::Continue
            }))
            .unwrap();
            assert_eq!(probe.optimized(), Ok(()), "round {round}");
            assert!(lines_of_file_at(jumped).iter().any(|l| l.contains(" rwxp ")), "held writable under the jump");
            let hits = HITS.load(Relaxed);
            assert_eq!(call(fxg_jumped, 5, 6), 0x100b);
            assert!(HITS.load(Relaxed) > hits, "round {round}: the test thread's call hit");
            drop(probe);
            assert_eq!(lines_of_file_at(jumped), maps_before, "round {round}: the maps as before the probe");
            assert_eq!(first_bytes(jumped), code_before, "round {round}");
        }
    });
    assert_eq!(WRONG.load(Relaxed), 0, "of {} calls", CALLS.load(Relaxed));
    assert_eq!(call(fxg_jumped, 1, 2), 0x1003);
    assert!(file_page(jumped), "the page is the file's again, not a private copy");

    // Another tool's breakpoint in another page of the same code (written through
    // `/proc/self/mem`, which leaves the areas as they were): that page is a copy whose bytes
    // are not the file's, so the code is not mapped again and the breakpoint stays. Taken away,
    // the copy holds the file's bytes again, and the file's own mapping comes back.
    let elsewhere = addr_of(fxg_elsewhere);
    assert_ne!(elsewhere.0 / 4096, jumped.0 / 4096);
    assert!(lines_of_file_at(elsewhere) == maps_before, "one file's code");
    let original = first_bytes(elsewhere);
    poke(elsewhere, &[0xcc]);
    let jump = register(Kprobe::addr(jumped).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(jump.optimized(), Ok(()));
    drop(jump);
    assert_eq!(first_bytes(elsewhere)[0], 0xcc, "the other tool's breakpoint kept");
    assert!(lines_of_file_at(jumped).iter().all(|l| !l.contains(" rwxp ")), "the protection given back");
    poke(elsewhere, &original[..1]);
    let jump = register(Kprobe::addr(jumped).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(jump.optimized(), Ok(()));
    drop(jump);
    assert_eq!(lines_of_file_at(jumped), maps_before, "the file's mapping back");
    assert_eq!(first_bytes(elsewhere), original);
    assert!(file_page(elsewhere), "the file's page, not a copy");

    // An `int3` left in the page: its bytes are not the file's, so the page keeps them (its
    // protection alone is given back), and the probe there goes on counting every call.
    static TRAP_HITS: AtomicU64 = AtomicU64::new(0);
    let trap = register(Kprobe::addr(trapped).no_optimize().pre(|_| {
        TRAP_HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let jump = register(Kprobe::addr(jumped).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(jump.optimized(), Ok(()));
    drop(jump);
    assert!(lines_of_file_at(jumped).iter().all(|l| !l.contains(" rwxp ")), "the protection given back");
    for i in 0..100 {
        assert_eq!(call(fxg_trapped, i, 1), i + 1 + 0x2000);
    }
    assert_eq!(TRAP_HITS.load(Relaxed), 100);
    assert_eq!(call(fxg_jumped, 1, 2), 0x1003);
    drop(trap);
    assert_eq!(first_bytes(jumped), code_before);
    assert_eq!(call(fxg_trapped, 1, 2), 0x2003);
    assert_eq!(TRAP_HITS.load(Relaxed), 100);

    // The same in the C library (the probe that keeps `SIGTRAP` open, placed for each session
    // of the agent).
    let in_libc = Addr(libc::pthread_sigmask as *const () as u64);
    let libc_before = lines_of_file_at(in_libc);
    let guard = dprobe_inproc::keep_traps_open().unwrap();
    assert_eq!(guard.optimized(), Ok(()));
    drop(guard);
    assert_eq!(lines_of_file_at(in_libc), libc_before);
}
