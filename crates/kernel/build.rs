//! Compiles the BPF program that aggregates in the kernel (`src/bpf/aggregate.bpf.c`) with
//! clang, into `OUT_DIR`, where the engine includes it. It uses no header, so clang alone
//! builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let source = "src/bpf/aggregate.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Twice: with the map of keys allocated up front, and as keys arrive (`DPROBE_LAZY_KEYS`),
    // which the engine uses where the kernel allows it (see `bpf.rs`).
    compile(source, &[], &out_dir.join("aggregate.bpf.o"));
    compile(source, &["-DDPROBE_LAZY_KEYS"], &out_dir.join("aggregate_lazy.bpf.o"));
}

fn compile(source: &str, defines: &[&str], out: &Path) {
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    // -g: the maps are described in BTF, which the loader reads.
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .args(defines)
        .args(["-c", source, "-o"])
        .arg(out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`{clang} -target bpf` failed to compile {source} ({s})"),
        Err(e) => panic!(
            "dprobe-kernel needs clang to compile its BPF program ({source}): `{clang}`: {e}; install clang \
             (Debian: apt-get install clang), or point BPF_CLANG at one"
        ),
    }
}
