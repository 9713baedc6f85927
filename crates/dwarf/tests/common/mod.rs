//! What the DWARF tests share: compiling small C programs and splitting their debug
//! information out the way distributions do.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory of this test process's own, named `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dprobe-dwarf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compile C `source` with `compiler` and `flags` into `dir/name`.
pub fn compile(compiler: &str, source: &str, dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    run(Command::new(compiler).args(flags).arg("-o").arg(&out).arg(&src));
    out
}

/// `objcopy --only-keep-debug BINARY DEBUG`, then strip the binary's DWARF
/// (`strip --strip-debug`), as Debian's packaging does.
pub fn split_debug(binary: &Path, debug: &Path) {
    run(Command::new("objcopy").arg("--only-keep-debug").arg(binary).arg(debug));
    run(Command::new("strip").arg("--strip-debug").arg(binary));
}

/// Add a `.gnu_debuglink` naming `debug` (its file name, with its CRC) to `binary`.
pub fn add_debuglink(binary: &Path, debug: &Path) {
    run(Command::new("objcopy").arg(format!("--add-gnu-debuglink={}", debug.display())).arg(binary));
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

/// A build-id no other binary has: this process's id and the time, as hex.
pub fn unique_build_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("d9b0{:08x}{:024x}", std::process::id(), nanos)
}
