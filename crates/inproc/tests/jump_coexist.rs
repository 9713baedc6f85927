//! Jumps and other tools' changes to the same code: the page under a live jump is writable
//! (which keeps kernel uprobes off it) and gets its protection back with the last jump there;
//! where writable code is refused, or the code is not what its file holds, or another tool's
//! `int3` is at the probe, the probe stays on `int3` or is refused, and the bytes are always
//! given back as they were. An `int3` probe whose breakpoint another tool took away (a kernel
//! uprobe removed writes the original byte back over it) is put back and counted.
mod fixtures;
use fixtures::{addr, call2, code, perms};

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use dprobe_inproc::{
    register, register_kretprobe, Addr, Kprobe, Kretprobe, NotOptimized, PreAction, Probe, ProbeError,
};

std::arch::global_asm!(
    ".text",
    // Two functions at the start of a page of their own.
    ".p2align 12",
    ".globl fxc_a",
    ".type fxc_a,@function",
    "fxc_a:",
    "lea rax, [rdi + rsi + 0x1000]",
    "ret",
    ".size fxc_a, . - fxc_a",
    ".globl fxc_b",
    ".type fxc_b,@function",
    "fxc_b:",
    "lea rax, [rdi + rsi + 0x2000]",
    "ret",
    ".size fxc_b, . - fxc_b",
    // A function whose 8-byte first instruction crosses into the next page, which no other
    // function here shares.
    ".p2align 12",
    ".skip 4093, 0xcc",
    ".globl fxc_cross",
    ".type fxc_cross,@function",
    "fxc_cross:",
    "lea rax, [rdi + rsi + 0x3000]",
    "ret",
    ".size fxc_cross, . - fxc_cross",
    // Each of these in a page of its own.
    ".p2align 12",
    ".globl fxc_refused",
    ".type fxc_refused,@function",
    "fxc_refused:",
    "lea rax, [rdi + rsi + 0x4000]",
    "ret",
    ".size fxc_refused, . - fxc_refused",
    ".p2align 12",
    ".globl fxc_patched",
    ".type fxc_patched,@function",
    "fxc_patched:",
    "mov rax, rdi",
    "add rax, 1",
    "ret",
    ".size fxc_patched, . - fxc_patched",
    ".p2align 12",
    ".globl fxc_foreign",
    ".type fxc_foreign,@function",
    "fxc_foreign:",
    "lea rax, [rdi + rsi + 0x5000]",
    "ret",
    ".size fxc_foreign, . - fxc_foreign",
    ".p2align 12",
    ".globl fxc_undone",
    ".type fxc_undone,@function",
    "fxc_undone:",
    "lea rax, [rdi + rsi + 0x6000]",
    "ret",
    ".size fxc_undone, . - fxc_undone",
    ".p2align 12",
    ".globl fxc_undone_exit",
    ".type fxc_undone_exit,@function",
    "fxc_undone_exit:",
    "lea rax, [rdi + rsi + 0x7000]",
    "ret",
    ".size fxc_undone_exit, . - fxc_undone_exit",
    ".p2align 12",
    ".globl fxc_blocked",
    ".type fxc_blocked,@function",
    "fxc_blocked:",
    "mov rax, rdi",
    "add rax, rsi",
    "add rax, 0x70",
    "ret",
    ".size fxc_blocked, . - fxc_blocked",
    ".p2align 12",
    ".globl fxc_reprotected",
    ".type fxc_reprotected,@function",
    "fxc_reprotected:",
    "lea rax, [rdi + rsi + 0x8000]",
    "ret",
    ".size fxc_reprotected, . - fxc_reprotected",
    ".p2align 12",
    ".globl fxc_hot_patched",
    ".type fxc_hot_patched,@function",
    "fxc_hot_patched:",
    "lea rax, [rdi + rsi + 0x9000]",
    "ret",
    ".size fxc_hot_patched, . - fxc_hot_patched",
    ".p2align 12",
    ".globl fxc_debugged",
    ".type fxc_debugged,@function",
    "fxc_debugged:",
    "lea rax, [rdi + rsi + 0xa000]",
    "ret",
    ".size fxc_debugged, . - fxc_debugged",
    ".globl fxc_other_a",
    ".type fxc_other_a,@function",
    "fxc_other_a:",
    "lea rax, [rdi + rsi + 0xb000]",
    "ret",
    ".size fxc_other_a, . - fxc_other_a",
    ".globl fxc_other_b",
    ".type fxc_other_b,@function",
    "fxc_other_b:",
    "lea rax, [rdi + rsi + 0xc000]",
    "ret",
    ".size fxc_other_b, . - fxc_other_b",
    ".p2align 12",
);

extern "C" {
    fn fxc_a(a: u64, b: u64) -> u64;
    fn fxc_b(a: u64, b: u64) -> u64;
    fn fxc_cross(a: u64, b: u64) -> u64;
    fn fxc_refused(a: u64, b: u64) -> u64;
    fn fxc_patched(a: u64, b: u64) -> u64;
    fn fxc_foreign(a: u64, b: u64) -> u64;
    fn fxc_undone(a: u64, b: u64) -> u64;
    fn fxc_undone_exit(a: u64, b: u64) -> u64;
    fn fxc_blocked(a: u64, b: u64) -> u64;
    fn fxc_reprotected(a: u64, b: u64) -> u64;
    fn fxc_hot_patched(a: u64, b: u64) -> u64;
    fn fxc_debugged(a: u64, b: u64) -> u64;
    fn fxc_other_a(a: u64, b: u64) -> u64;
    fn fxc_other_b(a: u64, b: u64) -> u64;
}

/// A probe counting its hits in `hits`.
fn counting(at: Addr, hits: &'static AtomicU64) -> Probe {
    register(Kprobe::addr(at).pre(move |_| {
        hits.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap()
}

/// Write `bytes` at `at` as another tool would (through `/proc/self/mem`).
fn poke(at: Addr, bytes: &[u8]) {
    let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem").unwrap();
    mem.write_all_at(bytes, at.0).unwrap();
}

#[test]
fn the_page_under_a_jump_is_writable_while_a_jump_is_there_and_r_x_after_the_last() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let (a, b) = (addr(fxc_a), addr(fxc_b));
    assert_eq!(a.0 / 4096, b.0 / 4096, "one page");
    assert_eq!(perms(a), "r-xp");
    let first = counting(a, &HITS);
    assert_eq!(first.optimized(), Ok(()));
    assert_eq!(perms(a), "rwxp", "writable under a live jump");
    let second = counting(b, &HITS);
    assert_eq!(second.optimized(), Ok(()));
    assert_eq!((call2(fxc_a, 1, 2), call2(fxc_b, 1, 2)), (0x1003, 0x2003));
    drop(first);
    assert_eq!(perms(a), "rwxp", "the other jump is still in the page");
    assert_eq!(call2(fxc_b, 3, 4), 0x2007);
    // Turned back into an int3 (disabled here): the jump goes, the page too.
    second.disable().unwrap();
    second.enable().unwrap();
    assert_eq!(second.optimized(), Ok(()));
    second.disable().unwrap();
    assert_eq!(perms(b), "r-xp", "no jump left in the page");
    second.enable().unwrap();
    assert_eq!(perms(b), "rwxp");
    drop(second);
    assert_eq!(perms(a), "r-xp", "no jump left in the page");
    assert_eq!(HITS.load(Relaxed), 3);
}

/// A batch makes the pages under its jumps writable before it arms its sites; a site that
/// then cannot be a jump after all (an `int3` probe inside its window, from the same batch)
/// gives its page back.
#[test]
fn a_page_made_writable_for_a_jump_that_a_probe_in_its_window_blocks_is_given_back() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let outer = addr(fxc_blocked);
    let inner = outer.offset(3);
    let count = |at: Addr| {
        Kprobe::addr(at).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        })
    };
    let mut probes = dprobe_inproc::register_all(vec![count(outer), count(inner).no_optimize()]).unwrap();
    assert_eq!(probes[0].optimized(), Err(NotOptimized::ProbeInWindow { other: inner }));
    assert_eq!(perms(outer), "r-xp", "no jump in the page: its protection is back");
    assert_eq!(call2(fxc_blocked, 1, 2), 0x73);
    assert_eq!(HITS.load(Relaxed), 2);
    // The probe inside the window gone, the outer one becomes a jump.
    drop(probes.pop());
    assert_eq!(probes[0].optimized(), Ok(()));
    assert_eq!(perms(outer), "rwxp");
    assert_eq!(call2(fxc_blocked, 3, 4), 0x77);
    assert_eq!(HITS.load(Relaxed), 3);
    drop(probes);
    assert_eq!(perms(outer), "r-xp");
    assert_eq!(code(outer, 10), [0x48, 0x89, 0xf8, 0x48, 0x01, 0xf0, 0x48, 0x83, 0xc0, 0x70]);
}

/// The program makes the page under a live jump read-only again (as a JIT or a loader may):
/// the jump's removal, whose writes into pages dprobe holds writable are plain stores, faults
/// there; the fault is caught, the bytes go back through `/proc/self/mem`, and the program
/// goes on with its code as it was.
#[test]
fn a_jump_page_the_program_made_read_only_again_is_still_given_back_byte_for_byte() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_reprotected);
    let original = code(at, 8);
    let p = counting(at, &HITS);
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(perms(at), "rwxp");
    let page = (at.0 & !4095) as *mut libc::c_void;
    // SAFETY: the fixture's page, which holds nothing but fixtures of this file; it stays
    // readable and executable.
    assert_eq!(unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) }, 0);
    assert_eq!(perms(at), "r-xp");
    assert_eq!(call2(fxc_reprotected, 1, 2), 0x8003);
    p.disable().unwrap();
    assert_eq!(code(at, 8), original, "the jump is gone from the read-only page");
    assert_eq!(call2(fxc_reprotected, 3, 4), 0x8007);
    p.enable().unwrap();
    assert_eq!(call2(fxc_reprotected, 5, 6), 0x800b);
    drop(p);
    assert_eq!(code(at, 8), original);
    assert_eq!(perms(at), "r-xp");
    assert_eq!(HITS.load(Relaxed), 2);
}

/// The program writes its own `jmp` over a probed function (a hot patch) while the probe is
/// there, on a jump or on `int3`: the program's code is what runs from then on, and disabling
/// or removing the probe leaves the program's bytes (nothing of dprobe's is left there).
#[test]
fn a_hot_patch_the_program_wrote_over_a_probe_stays_when_the_probe_goes() {
    let _alone = TAKING_AWAY.lock().unwrap_or_else(|e| e.into_inner());
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_hot_patched);
    let original = code(at, 8);
    let rel = (addr(fxc_b).0 as i64 - (at.0 as i64 + 5)) as i32;
    let mut patch = vec![0xe9];
    patch.extend_from_slice(&rel.to_le_bytes());
    for on_int3 in [false, true] {
        poke(at, &original[..5]);
        let probe = Kprobe::addr(at).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        });
        let p = register(if on_int3 { probe.no_optimize() } else { probe }).unwrap();
        assert_eq!(p.optimized().is_ok(), !on_int3);
        assert_eq!(call2(fxc_hot_patched, 1, 2), 0x9003);
        poke(at, &patch);
        assert_eq!(call2(fxc_hot_patched, 1, 2), 0x2003, "the program's patch runs");
        // Disabled: nothing of dprobe's is there to take away. Enabled again: refused, the
        // code is not what the probe was placed on.
        p.disable().unwrap();
        assert_eq!(code(at, 5), patch);
        match p.enable() {
            Err(ProbeError::Patch { addr, reason }) if addr == at => assert!(reason.contains("changed"), "{reason}"),
            other => panic!("{other:?}"),
        }
        drop(p);
        assert_eq!(code(at, 5), patch, "the program's patch kept (on int3: {on_int3})");
        assert_eq!(&code(at, 8)[5..], &original[5..]);
        assert_eq!(call2(fxc_hot_patched, 3, 4), 0x2007);
    }
    assert_eq!(HITS.load(Relaxed), 2);
    // The function as it was, probed again: a probe like any other.
    poke(at, &original[..5]);
    let p = counting(at, &HITS);
    assert_eq!(call2(fxc_hot_patched, 1, 2), 0x9003);
    drop(p);
    assert_eq!(code(at, 8), original);
    assert_eq!(HITS.load(Relaxed), 3);
}

/// A debugger's breakpoint put on a probe's jump (gdb saves the `e9` as the original byte):
/// when the probe goes, the jump and its detour stay, running no handler, and no other probe
/// takes the detour over; when the debugger writes its `e9` back, the program runs through
/// the detour, and the original code comes back at the next look (`rearm_undone`). Before,
/// the probe's removal gave the detour up and left the jump's other bytes: the debugger's
/// `e9` then sent the program into a detour reused by another probe, or into nothing.
#[test]
fn a_jump_under_a_debugger_s_breakpoint_stays_a_pass_through_until_the_breakpoint_goes() {
    let _alone = TAKING_AWAY.lock().unwrap_or_else(|e| e.into_inner());
    static HITS: AtomicU64 = AtomicU64::new(0);
    static OTHERS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_debugged);
    let original = code(at, 8);
    let p = counting(at, &HITS);
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxc_debugged, 1, 2), 0xa003);
    let jump = code(at, 5);
    assert_eq!(jump[0], 0xe9);
    poke(at, &[0xcc]);
    drop(p);
    assert_eq!(code(at, 5), [&[0xcc], &jump[1..]].concat(), "the debugger's byte, then the jump's");
    let kept = dprobe_inproc::kept_jumps();
    assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), [at]);
    assert!(kept[0].1.as_deref().is_some_and(|s| s.ends_with(":fxc_debugged+0x0")), "{kept:?}");
    // Probes placed and removed meanwhile (their detours may reuse given-up ones).
    for _ in 0..3 {
        let others: Vec<Probe> = [addr(fxc_other_a), addr(fxc_other_b)].map(|a| counting(a, &OTHERS)).into();
        assert_eq!((call2(fxc_other_a, 1, 2), call2(fxc_other_b, 1, 2)), (0xb003, 0xc003));
        drop(others);
    }
    assert_eq!(dprobe_inproc::rearm_undone(), 0);
    assert_eq!(code(at, 5)[0], 0xcc, "the debugger's breakpoint is left alone while it is there");
    // The debugger goes, writing back the byte it saved.
    poke(at, &[0xe9]);
    assert_eq!(call2(fxc_debugged, 3, 4), 0xa007, "through the detour, which runs no handler");
    dprobe_inproc::rearm_undone();
    assert_eq!(code(at, 8), original, "the original code back, byte for byte");
    assert!(dprobe_inproc::kept_jumps().is_empty());
    assert_eq!(call2(fxc_debugged, 5, 6), 0xa00b);
    // Probed again: a probe like any other.
    let p = counting(at, &HITS);
    assert_eq!(call2(fxc_debugged, 1, 2), 0xa003);
    drop(p);
    assert_eq!(code(at, 8), original);
    assert_eq!(HITS.load(Relaxed), 2);
}

#[test]
fn a_jump_across_a_page_boundary_holds_both_pages() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_cross);
    let next = Addr((at.0 / 4096 + 1) * 4096);
    assert_eq!(next.0 - at.0, 3, "the instruction crosses into the next page");
    let p = counting(at, &HITS);
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!((perms(at), perms(next)), ("rwxp".to_owned(), "rwxp".to_owned()));
    assert_eq!(call2(fxc_cross, 5, 6), 0x300b);
    drop(p);
    assert_eq!((perms(at), perms(next)), ("r-xp".to_owned(), "r-xp".to_owned()));
    assert_eq!(code(at, 8), [0x48, 0x8d, 0x84, 0x37, 0x00, 0x30, 0x00, 0x00]);
    assert_eq!(HITS.load(Relaxed), 1);
}

/// Refuse, for the calling thread only, `mprotect` calls asking for writable and executable
/// memory (`EACCES`), as a security policy would.
fn refuse_writable_code_on_this_thread() {
    #[repr(C)]
    struct Insn {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct Program {
        len: u16,
        filter: *const Insn,
    }
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const AND_K: u16 = 0x54;
    const RET_K: u16 = 0x06;
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    let filter = [
        // The system call's number (`seccomp_data.nr`).
        Insn { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
        Insn { code: JEQ_K, jt: 0, jf: 4, k: libc::SYS_mprotect as u32 },
        // The low half of its third argument (`seccomp_data.args[2]`).
        Insn { code: LD_W_ABS, jt: 0, jf: 0, k: 32 },
        Insn { code: AND_K, jt: 0, jf: 0, k: wx },
        Insn { code: JEQ_K, jt: 0, jf: 1, k: wx },
        Insn { code: RET_K, jt: 0, jf: 0, k: 0x0005_0000 | libc::EACCES as u32 },
        Insn { code: RET_K, jt: 0, jf: 0, k: 0x7fff_0000 },
    ];
    let program = Program { len: filter.len() as u16, filter: filter.as_ptr() };
    // SAFETY: no_new_privs (of this thread) takes integers; the filter program is read by the
    // kernel during the call, and applies to this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const Program), 0);
    }
}

#[test]
fn where_writable_code_is_refused_the_probe_stays_on_int3_and_says_why() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_refused);
    std::thread::spawn(move || {
        refuse_writable_code_on_this_thread();
        let p = counting(at, &HITS);
        match p.optimized() {
            Err(NotOptimized::CodeNotWritable { addr, reason }) => {
                assert_eq!(addr, at);
                assert!(reason.contains("Permission denied"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(code(at, 1), [0xcc], "an int3 probe");
        assert_eq!(perms(at), "r-xp");
        let sums: u64 = (0..100).map(|i| call2(fxc_refused, i, 1)).sum();
        assert_eq!(sums, (0..100).map(|i| i + 1 + 0x4000).sum::<u64>());
        assert_eq!(p.hits(), 100);
        let info = dprobe_inproc::list().into_iter().find(|i| i.addr == at).unwrap();
        assert!(matches!(info.jump, Err(NotOptimized::CodeNotWritable { .. })), "{:?}", info.jump);
        drop(p);
        assert_eq!(code(at, 8), [0x48, 0x8d, 0x84, 0x37, 0x00, 0x40, 0x00, 0x00]);
    })
    .join()
    .unwrap();
    assert_eq!(HITS.load(Relaxed), 100);
}

#[test]
fn code_that_is_not_its_files_stays_on_int3() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_patched);
    // `mov rax, rdi; add rax, 1; ret`: another instrumentation library made it `add rax, 2`.
    assert_eq!(code(at, 8), [0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x01, 0xc3]);
    poke(at.offset(6), &[0x02]);
    let p = counting(at, &HITS);
    match p.optimized() {
        Err(NotOptimized::CodeChanged { at: first, what, found, expected }) => {
            assert_eq!((first, found, expected), (at.offset(6), vec![0x02], vec![0x01]));
            assert!(what.starts_with("its file /"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(code(at, 1), [0xcc], "an int3 probe");
    assert_eq!(perms(at), "r-xp", "no jump, the page as it was");
    assert_eq!(call2(fxc_patched, 40, 0), 42, "the code as it is now runs");
    drop(p);
    assert_eq!(code(at, 8), [0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x02, 0xc3], "the other tool's patch kept");
    // Its patch taken away: the code is not what the site left, so it is analyzed afresh (its
    // copy of the window would have run the other tool's code): the file's code again, and a
    // jump that runs it.
    poke(at.offset(6), &[0x01]);
    let p = counting(at, &HITS);
    assert_eq!(p.optimized(), Ok(()));
    assert_eq!(call2(fxc_patched, 40, 0), 41);
    drop(p);
    assert_eq!(code(at, 8), [0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x01, 0xc3]);
    assert_eq!(HITS.load(Relaxed), 2);
}

#[test]
fn another_tools_int3_at_the_probe_is_refused_never_taken_for_the_original_byte() {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_foreign);
    let original = code(at, 8);
    // Another tool's breakpoint (a kernel uprobe writes the same byte).
    poke(at, &[0xcc]);
    let refused = register(Kprobe::addr(at).pre(|_| PreAction::Continue)).unwrap_err();
    assert!(matches!(refused, ProbeError::ForeignBreakpoint { addr } if addr == at), "{refused:?}");
    assert_eq!(code(at, 1), [0xcc], "its breakpoint left alone");
    // The other tool takes its breakpoint away: dprobe places its own, and takes it away in
    // turn leaving the original byte (not the other tool's int3).
    poke(at, &original[..1]);
    let p = counting(at, &HITS);
    assert_eq!(call2(fxc_foreign, 1, 1), 0x5002);
    drop(p);
    assert_eq!(code(at, 8), original);
    assert_eq!(HITS.load(Relaxed), 1);
}

/// Held by the tests that take a probe's byte away: `rearm_undone` puts back every probe's
/// byte in the process, so one of them running beside another would put back (and count)
/// the other's.
static TAKING_AWAY: Mutex<()> = Mutex::new(());

#[test]
fn an_int3_taken_away_is_put_back_and_counted_only_where_the_original_instruction_is_back() {
    let _alone = TAKING_AWAY.lock().unwrap_or_else(|e| e.into_inner());
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = addr(fxc_undone);
    let original = code(at, 8);
    assert_eq!(original, [0x48, 0x8d, 0x84, 0x37, 0x00, 0x60, 0x00, 0x00]);
    let p = register(Kprobe::addr(at).no_optimize().pre(|_| {
        HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(code(at, 1), [0xcc], "an int3 probe");
    assert_eq!(dprobe_inproc::rearm_undone(), 0, "nothing taken away yet");
    assert_eq!(call2(fxc_undone, 1, 2), 0x6003);
    // What removing a kernel uprobe registered on the same instruction does: the file's first
    // byte written back over the int3 (the kernel took the int3 for its own).
    poke(at, &original[..1]);
    assert_eq!(call2(fxc_undone, 1, 2), 0x6003, "runs, unseen by the probe");
    // The rest of the instruction rewritten meanwhile (the program patched its code): not the
    // original, so not dprobe's to arm again.
    poke(at.offset(5), &[0x70]);
    assert_eq!(dprobe_inproc::rearm_undone(), 0);
    assert_eq!(code(at, 8), [0x48, 0x8d, 0x84, 0x37, 0x00, 0x70, 0x00, 0x00], "left as it was written");
    assert_eq!(call2(fxc_undone, 1, 2), 0x7003);
    // The original instruction back: the int3 is put back once, and counted.
    poke(at.offset(5), &[0x60]);
    assert_eq!(dprobe_inproc::rearm_undone(), 1);
    assert_eq!(dprobe_inproc::rearm_undone(), 0, "once");
    assert_eq!(code(at, 1), [0xcc]);
    assert_eq!(call2(fxc_undone, 3, 4), 0x6007);
    assert_eq!(perms(at), "r-xp", "an int3 probe leaves its page as it was");
    let stats = p.stats();
    assert_eq!((stats.hits, stats.rearmed), (2, 1));
    drop(p);
    assert_eq!(code(at, 8), original);
    assert_eq!(HITS.load(Relaxed), 2);
}

#[test]
fn a_return_probes_exit_taken_away_is_put_back_and_counted_as_the_probes() {
    let _alone = TAKING_AWAY.lock().unwrap_or_else(|e| e.into_inner());
    static RETURNS: AtomicU64 = AtomicU64::new(0);
    let f = addr(fxc_undone_exit);
    let ret = f.offset(8);
    let p = register_kretprobe(Kretprobe::addr(f).handler(|r, _| {
        RETURNS.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    // The one-byte `ret` at the end of the function: its exit probe stays on int3.
    assert_eq!(code(ret, 1), [0xcc], "the exit's int3");
    assert_eq!(call2(fxc_undone_exit, 1, 2), 0x7003);
    poke(ret, &[0xc3]);
    assert_eq!(call2(fxc_undone_exit, 1, 2), 0x7003, "its return unseen");
    assert_eq!(dprobe_inproc::rearm_undone(), 1);
    assert_eq!(code(ret, 1), [0xcc]);
    assert_eq!(call2(fxc_undone_exit, 3, 4), 0x7007);
    let stats = p.stats();
    assert_eq!((stats.hits, stats.returns, stats.rearmed), (3, 2, 1));
    assert_eq!(RETURNS.load(Relaxed), 0x7003 + 0x7007);
    drop(p);
    assert_eq!(code(f, 9), [0x48, 0x8d, 0x84, 0x37, 0x00, 0x70, 0x00, 0x00, 0xc3]);
}
