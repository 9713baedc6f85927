//! `dprobe trace` of code that runs before `main` and of a library loaded again and again.
mod common;

use common::{ctor_plugin, hits, loads, out_file, plugin, trace};

#[test]
fn constructors_are_probed() {
    // Each engine that traces one program: the calls from the constructors of the program's
    // libraries and of the program itself are all seen (the agent is loaded before them).
    let probes = ["libdprobe_ctor:ctor_work", "main_work", "libdprobe_ctorplugin:plugin_ctor_work"];
    for engine in ["ptrace", "agent"] {
        let mut args = vec!["--engine", engine, "--count"];
        args.extend(probes);
        args.extend(["--", loads(), "ctors", ctor_plugin()]);
        let (code, out) = trace(&format!("{engine}-ctors"), &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let counts: Vec<u64> = probes.iter().map(|p| hits(&out, p)).collect();
        assert_eq!(counts, [6, 4, 4], "{engine}: calls from the constructors and from main\n{out}");
    }
}

#[test]
fn constructors_of_a_library_loaded_later_are_probed_by_the_agent() {
    // A library the program loads later is probed before its own constructor runs.
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

#[test]
fn a_library_named_by_a_relative_path_is_probed_at_every_load() {
    // `./libdprobe_plugin.so:…` from the library's own directory, where dprobe runs: the path
    // is the user's, from dprobe's directory, and names the library the program loads later
    // (by its absolute path) in each engine.
    let library = std::path::Path::new(plugin());
    let (dir, file) = (library.parent().unwrap(), library.file_name().unwrap().to_str().unwrap());
    let probe = format!("./{file}:plugin_twice");
    for engine in ["ptrace", "agent"] {
        let out = out_file(&format!("{engine}-relative-reload"));
        let args = ["trace", "-o", out.to_str().unwrap(), "--engine", engine, "--count", &probe, "--"];
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
            .current_dir(dir)
            .args(args)
            .args([loads(), "reload", plugin(), "20"])
            .output()
            .unwrap();
        let summary = std::fs::read_to_string(&out).unwrap_or_default();
        let what = format!("{engine}\n{}\n{summary}", String::from_utf8_lossy(&o.stderr));
        assert_eq!((o.status.code(), hits(&summary, &probe)), (Some(0), 20), "{what}");
        assert!(!summary.contains("never loaded"), "{what}");
    }
}
