//! What the kernel crate's tests share: the fixture programs and the kernel's event file.
#![allow(dead_code)]
use dprobe_kernel::Tracefs;

/// The C program `DIR/NAME.c` (DIR relative to this crate), built with `-O2`.
pub fn fixture(dir: &str, name: &str) -> &'static str {
    let src = format!("{}/{dir}/{name}.c", env!("CARGO_MANIFEST_DIR"));
    dprobe_test_fixtures::c_program(&src, name, &["-O2"])
}

/// The kernel's `uprobe_events`, as it reads now.
pub fn uprobe_events() -> String {
    std::fs::read_to_string(Tracefs::open().unwrap().path("uprobe_events")).unwrap()
}
