//! What the ptrace engine's tests share: the target program (compiled once per test run)
//! and counting handlers.
#![allow(dead_code)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

fn build_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dprobe-ptrace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(args: &[&str], out: &std::path::Path, src: &str) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = format!("{}/tests/fixtures/{src}", env!("CARGO_MANIFEST_DIR"));
    let ok = std::process::Command::new(cc).args(args).arg("-o").arg(out).arg(src).status().unwrap().success();
    assert!(ok, "compiling {}", out.display());
}

/// The target program.
pub fn target() -> &'static str {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = build_dir().join("target");
        compile(&["-O2", "-pthread"], &out, "target.c");
        out
    })
    .to_str()
    .unwrap()
}

/// The library the target loads with `dlopen`.
pub fn plugin() -> &'static str {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = build_dir().join("libdprobe_plugin.so");
        compile(&["-O2", "-shared", "-fPIC"], &out, "plugin.c");
        out
    })
    .to_str()
    .unwrap()
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
