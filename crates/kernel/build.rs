//! Compiles the BPF program that aggregates in the kernel (`src/bpf/aggregate.bpf.c`) with
//! clang, into `OUT_DIR`, where the engine includes it. It uses no header, so clang alone
//! builds it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/bpf/aggregate.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("aggregate.bpf.o");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into());
    // -g: the maps are described in BTF, which the loader reads.
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c", source, "-o"])
        .arg(&out)
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
