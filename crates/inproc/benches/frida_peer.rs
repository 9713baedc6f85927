//! Per hit, in one run: a jump-optimized probe, the same probe on `int3`, a plain call, and
//! Frida's Interceptor with a native callback, all on copies of one function.
//!
//! `cargo bench -p dprobe-inproc --bench frida_peer` measures dprobe's three rows in this
//! process (medians of interleaved rounds), then runs `frida_peer.py` beside this file with
//! `python3` (or `$PYTHON`): it starts this executable again in its Frida-target role, hooks
//! the target's copy of the function with a CModule `onEnter` that counts, and the target
//! measures the hooked copy against an unhooked one the same way. Each process's plain call
//! is subtracted from its own figures. Without the `frida` Python package the Frida row says
//! so and the others are still printed.
//!
//! Every handler counts, and the counts are checked against the calls made.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use dprobe_inproc::{register, Addr, Kprobe, PreAction};

// Four copies of one function: a 5-byte nop (what compilers emit for patchable entries),
// then `x + 1`.
std::arch::global_asm!(
    ".text",
    ".macro peer_fn name",
    ".globl \\name",
    ".type \\name,@function",
    ".p2align 4",
    "\\name:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + 1]",
    "ret",
    ".size \\name, . - \\name",
    ".endm",
    "peer_fn peer_plain",
    "peer_fn peer_jump",
    "peer_fn peer_int3",
    "peer_fn peer_frida",
);

extern "C" {
    fn peer_plain(x: u64) -> u64;
    fn peer_jump(x: u64) -> u64;
    fn peer_int3(x: u64) -> u64;
    fn peer_frida(x: u64) -> u64;
}

type Target = unsafe extern "C" fn(u64) -> u64;

const ROUNDS: usize = 15;
/// Calls per measure of the fast paths; the trap path takes fewer.
const CALLS: u64 = 200_000;
const TRAP_CALLS: u64 = 20_000;

/// `n` calls of `f`; ns per call.
fn per_call(f: Target, n: u64) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: the peer functions return their argument plus one.
        black_box(unsafe { black_box(f)(black_box(i)) });
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians over interleaved rounds of each `(f, calls)`; and the calls made of each.
fn interleaved(targets: &[(Target, u64)]) -> (Vec<f64>, Vec<u64>) {
    let mut samples = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (k, (f, n)) in targets.iter().enumerate() {
            samples[k].push(per_call(*f, *n));
        }
    }
    let calls = targets.iter().map(|(_, n)| n * ROUNDS as u64).collect();
    (samples.into_iter().map(median).collect(), calls)
}

/// The role `frida_peer.py` starts: say where the function to hook is, wait until it is
/// hooked, measure it against the unhooked copy, wait until the counter was read.
fn frida_target() {
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    writeln!(stdout, "ready {:#x}", peer_frida as *const () as usize).expect("stdout");
    stdout.flush().expect("stdout");
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    let (m, calls) = interleaved(&[(peer_frida, CALLS), (peer_plain, CALLS)]);
    writeln!(stdout, "hooked={:.2} plain={:.2} calls={}", m[0], m[1], calls[0]).expect("stdout");
    stdout.flush().expect("stdout");
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
}

/// Frida's figures: `(hooked, plain)` ns per call, or why there are none.
fn frida_row() -> Result<(f64, f64), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/frida_peer.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(exe)
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.starts_with("FRIDA ")) else {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python} {script} failed: {}", err.lines().last().unwrap_or("no output")));
    };
    let field = |name: &str| -> Result<f64, String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    let (calls, hits) = (field("calls")?, field("hits")?);
    if calls != hits {
        return Err(format!("Frida's callback ran {hits} times for {calls} calls"));
    }
    Ok((field("hooked")?, field("plain")?))
}

fn main() {
    if std::env::var("DPROBE_PEER_ROLE").as_deref() == Ok("frida-target") {
        return frida_target();
    }
    static HITS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    // Counted as the CModule's `hits++` counts (a load and a store, one thread): a locked add
    // costs dprobe's hit 8-9 ns more here (`hit_cost`'s last row), work Frida's callback skips.
    fn bump(c: &AtomicU64) {
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
    let at = |f: Target| Addr(f as *const () as usize as u64);
    let jump = register(Kprobe::addr(at(peer_jump)).pre(|_| {
        bump(&HITS[0]);
        PreAction::Continue
    }))
    .expect("probe");
    assert_eq!(jump.optimized(), Ok(()), "the jump row measures a jump");
    let int3 = register(Kprobe::addr(at(peer_int3)).no_optimize().pre(|_| {
        bump(&HITS[1]);
        PreAction::Continue
    }))
    .expect("probe");
    let (m, calls) = interleaved(&[(peer_plain, CALLS), (peer_jump, CALLS), (peer_int3, TRAP_CALLS)]);
    assert_eq!((HITS[0].load(Relaxed), HITS[1].load(Relaxed)), (calls[1], calls[2]), "every call counted");
    drop((jump, int3));
    let frida = frida_row();

    println!("\nper call, medians of {ROUNDS} interleaved rounds; 'hit' = over the plain call of the same process");
    println!("{:<44} {:>10} {:>10} {:>12}", "path", "ns/call", "ns/hit", "hit / Frida");
    let frida_hit = frida.as_ref().ok().map(|(hooked, plain)| hooked - plain);
    let ratio = |hit: f64| frida_hit.map_or("-".to_string(), |f| format!("{:.2}", hit / f));
    println!("{:<44} {:>10.1} {:>10} {:>12}", "plain call (no probe)", m[0], "-", "-");
    println!("{:<44} {:>10.1} {:>10.1} {:>12}", "dprobe jump-optimized", m[1], m[1] - m[0], ratio(m[1] - m[0]));
    println!("{:<44} {:>10.1} {:>10.1} {:>12}", "dprobe same probe on int3", m[2], m[2] - m[0], ratio(m[2] - m[0]));
    match frida {
        Ok((hooked, plain)) => {
            println!("{:<44} {:>10.1} {:>10} {:>12}", "plain call, Frida's process", plain, "-", "-");
            println!(
                "{:<44} {:>10.1} {:>10.1} {:>12}",
                "Frida Interceptor, CModule onEnter",
                hooked,
                hooked - plain,
                "1.00"
            );
            println!("Frida / jump-optimized: {:.1}x", (hooked - plain) / (m[1] - m[0]));
        }
        Err(why) => println!("Frida Interceptor: not measured ({why})"),
    }
}
