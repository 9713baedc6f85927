//! `dprobe trace` with globals and statics by name (`counter`, `table[2]`, `cfg->name`, a
//! function's own static, a static of a shared library): every value equals what the program
//! prints of them at the same call, for gcc and clang at -O0 and -O2, as a PIE and not, in
//! the ptrace, agent and kernel engines; a parameter hides the global of its name. The kernel
//! case uses the system's tracefs (run it under the project's full-test lock).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::out_file;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixture built by `cc` at `opt`, as a PIE or not, with its library, in a directory of
/// its own (the kernel's uprobes are on files: each engine probes its own copies); returns
/// (program, library).
fn build(engine: &str, cc: &str, opt: &str, pie: bool) -> (String, String) {
    let pie_flag = if pie { "-pie" } else { "-no-pie" };
    let dir = std::env::temp_dir().join(format!("dprobe-globals-{}/{engine}-{cc}{opt}{pie_flag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libglobals.so");
    let bin = dir.join("globals");
    let compile = |args: &[&str], out: &Path| {
        let o = Command::new(cc).args(["-g", opt]).args(args).arg("-o").arg(out).output().unwrap();
        assert!(o.status.success(), "{cc} {opt} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    compile(&["-fPIC", "-shared", &format!("{FIXTURES}/globals_lib.c")], &lib);
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let libdir = format!("-L{}", dir.display());
    let sources = [format!("{FIXTURES}/globals.c"), format!("{FIXTURES}/globals_other.c")];
    compile(&[pie_flag, "-fPIE", &sources[0], &sources[1], &libdir, "-lglobals", &rpath], &bin);
    (bin.display().to_string(), lib.display().to_string())
}

/// The specs: what each function of the fixture prints of itself, by the same names.
fn specs(bin: &str, lib: &str) -> Vec<String> {
    vec![
        format!("{bin}:report round counter table[2] cfg->name cfg->level cfg->limits[1] greeting mode calls visits"),
        format!("{bin}:shadow counter"),
        format!("{lib}:lib_step n lib_total"),
    ]
}

/// Run the fixture under `dprobe trace --engine ENGINE`: (the program's own lines, dprobe's
/// event lines from `call ` on).
fn run(engine: &str, bin: &str, lib: &str, out: &PathBuf) -> (Vec<String>, Vec<String>) {
    let mut args = vec!["trace".to_owned(), "--engine".into(), engine.into(), "-o".into(), out.display().to_string()];
    args.extend(specs(bin, lib));
    args.extend(["--".into(), bin.into()]);
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe")).args(&args).output().unwrap();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{engine} {bin}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let program: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
    let events: Vec<String> = text.lines().filter_map(|l| l.split_once(" call ")).map(|(_, c)| c.to_owned()).collect();
    assert_eq!(program.len(), 9, "{engine} {bin}: the program's lines");
    (program, events)
}

fn every_build(engine: &str) {
    for cc in ["gcc", "clang"] {
        for opt in ["-O0", "-O2"] {
            for pie in [true, false] {
                let (bin, lib) = build(engine, cc, opt, pie);
                let out = out_file(&format!("globals-{engine}-{cc}{opt}-{pie}"));
                let (program, events) = run(engine, &bin, &lib, &out);
                assert_eq!(events, program, "{engine}, {cc} {opt}, pie {pie}: dprobe's values are the program's own");
            }
        }
    }
}

#[test]
fn globals_and_statics_by_name_equal_the_programs_own_values_ptrace() {
    every_build("ptrace");
}

#[test]
fn globals_and_statics_by_name_equal_the_programs_own_values_agent() {
    every_build("agent");
}

#[test]
fn globals_and_statics_by_name_equal_the_programs_own_values_kernel() {
    every_build("kernel");
}

/// Globals that cannot be read, refused before the program runs with the reason.
#[test]
fn globals_that_cannot_be_read_are_refused_with_the_reason() {
    let (gcc, _) = build("refused", "gcc", "-O0", true);
    let (clang, _) = build("refused", "clang", "-O2", true);
    let cases = [
        (format!("{gcc}:shadow per_thread"), "`per_thread` cannot be fetched: it is thread-local (__thread)"),
        // clang keeps in memory only the element of `table` the program uses.
        (format!("{clang}:report table[1]"), "`table[1]` cannot be fetched: the compiler kept only bytes 16-23"),
        (format!("{gcc}:report no_such_global"), "no variable `no_such_global` in report here; known: round, calls"),
        (format!("{gcc}:report counter->x"), "`counter` is an int, which has no members"),
        (format!("{gcc}:report greeting[1]x"), "expected ->MEMBER, .MEMBER or [N] after a name"),
    ];
    for (spec, expected) in &cases {
        let o = common::dprobe(&["trace", "--engine", "ptrace", spec, "--", &gcc]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{spec}: {stderr}");
        assert!(stderr.contains(expected), "{spec}: expected {expected:?} in:\n{stderr}");
        assert!(o.stdout.is_empty(), "{spec}: the program never ran");
    }
}

/// `dprobe list --args` shows a function's own static at its link-time address.
#[test]
fn list_args_shows_a_functions_static() {
    let (bin, _) = build("list", "gcc", "-O0", false);
    let o = common::dprobe(&["list", &bin, "report", "--args"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let calls = text.lines().find(|l| l.contains("local  int calls")).unwrap_or_else(|| panic!("{text}"));
    assert!(calls.trim_end().ends_with("(static)") && calls.contains("@0x"), "{calls}");
}
