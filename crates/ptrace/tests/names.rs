//! Targets named as users name them: a C++ `operator+`, an address in the binary's own
//! numbering (`BINARY:0xADDR`), a path with a `+` in it, and a path that does not exist.
mod common;

use common::{counter, operators};
use dprobe_core::ProbeError;
use dprobe_ptrace::{Exit, ProbeDef, TraceError, Tracee};
use dprobe_sym::{ResolveError, Symbols};
use std::sync::atomic::Ordering::Relaxed;

/// Run `program 1000` with an entry probe on `target`; the hits.
fn hits_of(program: &str, target: &str) -> u64 {
    let mut t = Tracee::spawn(program, &["1000"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    let p = t.add_probe(target, h).unwrap_or_else(|e| panic!("`{target}`: {e}"));
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the program added correctly under `{target}`");
    assert_eq!(t.hits(p), c.load(Relaxed));
    t.hits(p)
}

#[test]
fn a_cpp_operator_plus() {
    assert_eq!(hits_of(operators(), "operator+"), 1000);
    assert_eq!(hits_of(operators(), &format!("{}:operator+", operators())), 1000);
}

#[test]
fn an_address_in_the_binary() {
    let f = Symbols::load_file(operators()).unwrap().find("operator+").unwrap().clone();
    assert_eq!(hits_of(operators(), &format!("{}:{:#x}", operators(), f.start.0)), 1000);
    let name = std::path::Path::new(operators()).file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(hits_of(operators(), &format!("{name}:{:#x}", f.start.0)), 1000, "by file name");
}

#[test]
fn a_path_with_a_plus_in_it() {
    let dir = std::env::temp_dir().join(format!("dprobe-g++-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("operators");
    std::fs::copy(operators(), &copy).unwrap();
    let copy = copy.to_str().unwrap();
    assert_eq!(hits_of(copy, &format!("{copy}:operator+")), 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_path_that_does_not_exist_is_refused_at_once() {
    let mut t = Tracee::spawn(operators(), &["10"]).unwrap();
    t.run_to_entry().unwrap();
    let (_, h) = counter();
    let e = t.add(ProbeDef::entry("./no/such/program:main", h).when_loaded()).expect_err("refused");
    assert!(
        matches!(e, TraceError::Probe(ProbeError::Target(ResolveError::NoSuchFile { ref path, .. })) if path == "./no/such/program"),
        "{e:?}"
    );
    assert_eq!(t.run().unwrap(), Exit::Code(0));
}
