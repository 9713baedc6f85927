//! Globs in probe specs (`prog:handle_*`, `libc:str*`): one probe per matching function, each
//! counted on its own line, with the ptrace and agent engines; a function that cannot be
//! probed is listed with the reason and left out; `--max-probes` caps the expansion.
mod common;

use common::{handlers, hits, trace_to_file};

#[test]
fn one_probe_per_matching_function_each_counted_apart() {
    let prog = handlers();
    let with_binary = format!("{prog}:handle_*");
    for engine in ["ptrace", "agent"] {
        for glob in [with_binary.as_str(), "handle_*"] {
            let t = trace_to_file("globs", &["--engine", engine, "--count", glob, "--", prog, "7"]);
            let (stderr, trace, what) = (&t.stderr, &t.trace, t.what(&format!("{engine} {glob}")));
            assert_eq!(t.code, Some(0), "{what}");
            assert_eq!(t.stdout, "get=7 put=14 delete=1\n", "{what}");
            let binary = if glob.contains('/') { prog } else { "handlers" };
            assert_eq!(hits(trace, &format!("{binary}:handle_get")), 7, "{what}");
            assert_eq!(hits(trace, &format!("{binary}:handle_put")), 14, "{what}");
            assert_eq!(hits(trace, &format!("{binary}:handle_delete")), 1, "{what}");
            // handle_raw starts with a system call: said, with the reason, and left out.
            assert!(stderr.contains("1 of the matching functions cannot be probed, left out:"), "{what}");
            assert!(stderr.contains("  handle_raw: cannot probe `syscall`"), "{what}");
            assert!(!trace.contains("handle_raw"), "{what}");
        }
    }
}

#[test]
fn fetch_arguments_apply_to_every_match() {
    let prog = handlers();
    let spec = format!("{prog}:handle_[pd]* key=$arg1:s64");
    // `[` is no glob character: the pattern is matched as written and matches nothing.
    let t = trace_to_file("globs-bracket", &[&spec, "--", prog, "2"]);
    assert_eq!(t.code, Some(2), "{}", t.stderr);
    assert!(t.stderr.contains("no function matches `handle_[pd]*` in "), "{}", t.stderr);
    let spec = format!("{prog}:handle_?e* key=$arg1:s64");
    let t = trace_to_file("globs-args", &[&spec, "--", prog, "2"]);
    assert_eq!(t.code, Some(0), "{}", t.what("args"));
    let calls: Vec<&str> = t.trace.lines().filter_map(|l| l.split_once(" call ").map(|(_, c)| c)).collect();
    assert_eq!(calls, ["handle_get(key=0)", "handle_get(key=1)", "handle_delete(key=2)"], "{}", t.trace);
}

#[test]
fn more_matches_than_max_probes_is_an_error_that_says_how_many() {
    let prog = handlers();
    let glob = format!("{prog}:handle_*");
    let t = trace_to_file("globs-max", &["--max-probes", "3", &glob, "--", prog, "1"]);
    assert_eq!(t.code, Some(2), "{}", t.stderr);
    assert!(t.stderr.contains("`handle_*` matches 4 functions, more than --max-probes (3)"), "{}", t.stderr);
    let t = trace_to_file("globs-max-ok", &["--max-probes", "4", "--count", &glob, "--", prog, "1"]);
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    assert_eq!(hits(&t.trace, &format!("{prog}:handle_put")), 2, "{}", t.trace);
}

#[test]
fn library_globs_probe_each_function_once() {
    // `cat` opens its one file with `open`; `open` and `open64` are one function, one line.
    let t = trace_to_file("globs-libc", &["--count", "libc:open*", "--", "cat", "/etc/hostname"]);
    let trace = &t.trace;
    assert_eq!(t.code, Some(0), "{}", t.what("libc:open*"));
    assert_eq!(hits(trace, "libc:open"), 1, "{trace}");
    assert_eq!(hits(trace, "libc:opendir"), 0, "{trace}");
    assert!(!trace.contains("libc:open64 "), "{trace}");
    // One line per function that `dprobe list` shows, aliases aside.
    let lines = trace.lines().filter(|l| l.starts_with("libc:open")).count();
    assert!(lines >= 6, "open, openat, opendir, openlog, open_memstream, openpty at least: {trace}");
}
