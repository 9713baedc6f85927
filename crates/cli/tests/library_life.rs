//! `dprobe trace` of code that runs before `main` and of a library loaded again and again.
mod common;

use common::{ctor_plugin, hits, loads, plugin, trace};

#[test]
fn constructors_are_probed() {
    let probes = ["libdprobe_ctor:ctor_work", "main_work", "libdprobe_ctorplugin:plugin_ctor_work"];
    let mut args = vec!["--count"];
    args.extend(probes);
    args.extend(["--", loads(), "ctors", ctor_plugin()]);
    let (code, out) = trace("ctors", &args);
    assert_eq!(code, Some(0), "{out}");
    let counts: Vec<u64> = probes.iter().map(|p| hits(&out, p)).collect();
    assert_eq!(counts, [6, 4, 4], "calls from the constructors and from main\n{out}");
}

#[test]
fn constructors_of_a_library_loaded_later_are_probed_by_the_agent() {
    // The agent comes into a started command at its entry, after the constructors of the
    // libraries it is linked with; a library it loads later is probed before its own
    // constructor runs.
    let probe = "libdprobe_ctorplugin:plugin_ctor_work";
    let args = ["--engine", "agent", "--count", probe, "--", loads(), "ctors", ctor_plugin()];
    let (code, out) = trace("agent-ctors", &args);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(hits(&out, probe), 4, "the calls from its constructor\n{out}");
}

#[test]
fn every_load_of_a_library_is_probed() {
    let probe = "libdprobe_plugin:plugin_twice";
    // Each engine that traces one program: the library is unloaded and loaded again, at
    // another address, between calls.
    for engine in ["ptrace", "agent"] {
        let args = ["--engine", engine, "--count", probe, "--", loads(), "reload", plugin(), "100"];
        let (code, out) = trace(&format!("{engine}-reload"), &args);
        assert_eq!((code, hits(&out, probe)), (Some(0), 100), "{engine}\n{out}");
        assert!(!out.contains("never loaded"), "{engine}\n{out}");
    }
}
