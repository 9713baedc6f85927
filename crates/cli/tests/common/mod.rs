//! What the command-line tests share: the fixture programs and running `dprobe`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn build_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dprobe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(args: &[&str], out: &Path, src: &str) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = format!("{}/../ptrace/tests/fixtures/{src}", env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new(cc).args(args).arg("-o").arg(out).arg(src).status().unwrap().success();
    assert!(ok, "compiling {}", out.display());
}

/// The target program of the ptrace engine's tests (its modes check their own results).
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

/// A fresh file path for `-o`.
pub fn out_file(name: &str) -> PathBuf {
    build_dir().join(name)
}

/// `dprobe ARGS`, waited for.
pub fn dprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dprobe")).args(args).output().unwrap()
}

/// `dprobe trace -o FILE ARGS`: (exit code, what it wrote to FILE).
pub fn trace(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = out_file(name);
    let mut all = vec!["trace", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = dprobe(&all);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(o.stderr.is_empty() || !String::from_utf8_lossy(&o.stderr).contains("panicked"), "no panic");
    (o.status.code(), text)
}

/// The count column of `probe` in a summary table.
pub fn hits(summary: &str, probe: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(probe))
        .unwrap_or_else(|| panic!("no line for {probe} in:\n{summary}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The bytes at `addr` in process `pid`, through its memory file.
pub fn read_mem(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(format!("/proc/{pid}/mem")).unwrap().read_exact_at(&mut b, addr).unwrap();
    b
}

/// Where function `name` is in process `pid`.
pub fn function_addr(pid: i32, name: &str) -> u64 {
    let maps = dprobe_sym::read_maps_of(pid as u32).unwrap();
    dprobe_sym::Symbols::load(&maps).find(name).unwrap().start.0
}
