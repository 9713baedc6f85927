//! Per-hit cost of the ptrace engine against the classic ptrace floor, in one run.
//!
//! `cargo bench -p dprobe-ptrace --bench stop_cost`
//!
//! The target (tests/fixtures/target.c, `loop N`) calls `probed` N times on its main thread. Measured
//! from the tracer, in wall time:
//! * untraced: the program alone;
//! * floor: what a debugger does per hit, two stops: `int3` traps, the tracer puts the
//!   original byte back, steps the instruction with `PTRACE_SINGLESTEP`, re-arms the `int3`
//!   and continues;
//! * dprobe: one stop per hit (the displaced instruction runs from a boosted copy).
//!
//! ns/hit = (traced - untraced) / N; medians of interleaved rounds.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dprobe_ptrace::{Exit, Tracee};
use dprobe_sym::{read_maps_of, Symbols};

const N: u64 = 100_000;
const ROUNDS: usize = 5;

fn target() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dprobe-ptrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("target");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/target.c");
    let ok = std::process::Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("cc")
        .success();
    assert!(ok, "compiling the target");
    out
}

fn args() -> [String; 2] {
    ["loop".into(), N.to_string()]
}

fn untraced(path: &str) -> Duration {
    let t = Instant::now();
    let s = std::process::Command::new(path).args(args()).status().expect("run");
    assert!(s.success());
    t.elapsed()
}

fn dprobe(path: &str) -> Duration {
    let a = args();
    let t0 = Instant::now();
    let mut t = Tracee::spawn(path, &[&a[0], &a[1]]).expect("spawn");
    t.run_to_entry().expect("entry");
    let p = t.add_probe("probed", Box::new(|_| {})).expect("probe");
    assert_eq!(t.run().expect("run"), Exit::Code(0));
    assert_eq!(t.hits(p), N);
    t0.elapsed()
}

/// The floor, written against raw ptrace: two stops per hit.
fn floor(path: &str) -> Duration {
    let t0 = Instant::now();
    let program = CString::new(path).expect("path");
    let a = args();
    let argv_owned: Vec<CString> =
        std::iter::once(path.to_owned()).chain(a).map(|s| CString::new(s).expect("arg")).collect();
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: a minimal tracer. The child only calls async-signal-safe functions before
    // execv; the parent traces it with plain ptrace requests on buffers it owns.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        let symbols = Symbols::load(&read_maps_of(pid as u32).expect("maps"));
        let at = symbols.find("probed").expect("probed").start.0;
        let peek = |addr: u64| libc::ptrace(libc::PTRACE_PEEKTEXT, pid, addr, 0) as u64;
        let original = peek(at);
        let armed = (original & !0xff) | 0xcc;
        libc::ptrace(libc::PTRACE_POKETEXT, pid, at, armed);
        let mut hits = 0u64;
        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        loop {
            libc::waitpid(pid, &mut status, 0);
            assert!(!libc::WIFSIGNALED(status), "the floor's target was killed");
            if libc::WIFEXITED(status) {
                assert_eq!(libc::WEXITSTATUS(status), 0);
                break;
            }
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs);
            if libc::WSTOPSIG(status) == libc::SIGTRAP && regs.rip == at + 1 {
                hits += 1;
                libc::ptrace(libc::PTRACE_POKETEXT, pid, at, original);
                regs.rip = at;
                libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &regs);
                libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0);
                libc::waitpid(pid, &mut status, 0);
                libc::ptrace(libc::PTRACE_POKETEXT, pid, at, armed);
                libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
            } else {
                libc::ptrace(libc::PTRACE_CONT, pid, 0, libc::WSTOPSIG(status));
            }
        }
        assert_eq!(hits, N);
    }
    t0.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches lists benchmarks; there is nothing to list.
    }
    let path = target();
    let path = path.to_str().expect("utf-8 path");
    let (mut base, mut fl, mut dp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(untraced(path).as_nanos() as f64);
        fl.push(floor(path).as_nanos() as f64);
        dp.push(dprobe(path).as_nanos() as f64);
    }
    let base = median(base);
    let per_hit = |v: Vec<f64>| (median(v) - base) / N as f64;
    let (fl, dp) = (per_hit(fl), per_hit(dp));
    println!("ptrace per-hit cost, {N} hits, median of {ROUNDS} interleaved rounds:");
    println!("{:<40} {:>10}", "path", "ns/hit");
    println!("{:<40} {:>10.0}", "floor (int3 + restore + singlestep)", fl);
    println!("{:<40} {:>10.0}", "dprobe (one stop, boosted copy)", dp);
    println!("dprobe / floor: {:.2}", dp / fl);
}
