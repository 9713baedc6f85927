//! Builds dprobe's agent, the library `dprobe` loads into traced programs, and leaves it in
//! `OUT_DIR` for `dprobe` to embed: `cargo install` then gives a working tool with nothing to
//! install next to it. The agent is built by a nested `cargo build` of its crate, with a
//! target directory of its own (the outer build holds the lock of its own directory), the
//! same profile, and no debug information (it would only make `dprobe` larger).
//!
//! It also generates the Perfetto trace messages dprobe writes from the vendored schema
//! (`proto/perfetto_trace.proto`), compiled by `protox`: building dprobe needs no `protoc`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates the agent is built from (its own and its path dependencies).
const SOURCES: [&str; 10] = ["agent", "inproc", "core", "arch", "spec", "sym", "rcu", "ptrace", "stack", "dwarf"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crates = manifest.parent().expect("the CLI is in crates/").to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    perfetto_messages(&manifest);
    for source in SOURCES {
        println!("cargo:rerun-if-changed={}", crates.join(source).join("src").display());
        println!("cargo:rerun-if-changed={}", crates.join(source).join("Cargo.toml").display());
    }
    println!("cargo:rerun-if-changed={}", crates.join("agent/build.rs").display());
    println!("cargo:rerun-if-changed={}", crates.join("../Cargo.lock").display());
    // The workspace's profiles (the hit path's crates optimized in debug builds) are the
    // agent's too.
    println!("cargo:rerun-if-changed={}", crates.join("../Cargo.toml").display());

    let target_dir = out.join("agent-build");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--lib", "--locked", "--package", "dprobe-agent", "--manifest-path"])
        .arg(crates.join("agent/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    let profile = if release {
        build.arg("--release");
        "RELEASE"
    } else {
        "DEV"
    };
    build.env(format!("CARGO_PROFILE_{profile}_DEBUG"), "false");
    // Flags meant for the outer build's units (coverage, a linter's wrapper) are not the
    // agent's.
    for var in ["RUSTC_WORKSPACE_WRAPPER", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR"] {
        build.env_remove(var);
    }
    let status = build.status().unwrap_or_else(|e| panic!("running cargo to build dprobe's agent: {e}"));
    assert!(status.success(), "building dprobe's agent (the dprobe-agent crate) failed");
    let built = target_dir.join(if release { "release" } else { "debug" }).join("libdprobe_agent.so");
    std::fs::copy(&built, out.join("libdprobe_agent.so"))
        .unwrap_or_else(|e| panic!("copying {} into the build: {e}", built.display()));
}

/// `perfetto.protos.rs` in `OUT_DIR`: prost's structs for the vendored Perfetto schema.
fn perfetto_messages(manifest: &Path) {
    let proto = manifest.join("proto");
    let schema = proto.join("perfetto_trace.proto");
    println!("cargo:rerun-if-changed={}", schema.display());
    let files = protox::compile([&schema], [&proto]).unwrap_or_else(|e| panic!("compiling {}: {e}", schema.display()));
    prost_build::Config::new()
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating Perfetto's messages from {}: {e}", schema.display()));
}
