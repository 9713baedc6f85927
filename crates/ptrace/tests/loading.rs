//! Probes on a library the program loads later, with `dlopen`.
mod common;

use common::{counter, plugin, target};
use dprobe_ptrace::{Exit, ProbeDef, Tracee};
use std::sync::atomic::Ordering::Relaxed;

#[test]
fn a_probe_on_a_library_loaded_later_waits_for_it() {
    let mut t = Tracee::spawn(target(), &["dlopen", plugin(), "1000"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    let (_, h2) = counter();
    assert!(t.add_probe("libdprobe_plugin:plugin_twice", h2).is_err(), "not loaded yet");
    let p = t.add(ProbeDef::entry("libdprobe_plugin:plugin_twice", h).when_loaded()).unwrap();
    assert_eq!(t.stats(p).addr(), None, "waiting");
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the plugin computed its results correctly");
    assert_eq!((t.hits(p), c.load(Relaxed)), (1000, 1000));
    assert!(t.stats(p).addr().is_some(), "placed when the library appeared");
}

#[test]
fn a_waiting_return_probe_is_placed_too() {
    let mut t = Tracee::spawn(target(), &["dlopen", plugin(), "300"]).unwrap();
    let (c, h) = counter();
    // Placed before the program has even loaded libc.
    let p = t.add(ProbeDef::on_return("libdprobe_plugin:plugin_twice", h).when_loaded()).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!((t.stats(p).returns, c.load(Relaxed)), (300, 300));
}
