//! `dprobe trace` with globals and statics by name (`counter`, `table[2]`, `cfg->name`, a
//! function's own static, a static of a shared library): every value equals what the program
//! prints of them at the same call, for gcc and clang at -O0 and -O2, as a PIE and not, in
//! the ptrace, agent and kernel engines; a parameter hides the global of its name. At a
//! return (`report%return`, `lib_step%return`) the globals and statics are read as the
//! function leaves them, which the program's next lines tell (`calls` one more, `lib_total`
//! plus n²); its parameters and locals are refused there. The kernel case uses the system's
//! tracefs (run it under the project's full-test lock).
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

/// The return probes' specs: the globals and statics each function leaves.
fn return_specs(bin: &str, lib: &str) -> Vec<String> {
    vec![
        format!("{bin}:report%return counter table[2] cfg->name cfg->limits[1] greeting mode calls visits"),
        format!("{lib}:lib_step%return lib_total"),
    ]
}

/// Run the fixture under `dprobe trace --engine ENGINE SPECS`: (the program's own lines,
/// dprobe's event lines: `call ` and what follows, or a return's `f(...)`).
fn run_specs(engine: &str, specs: Vec<String>, bin: &str, out: &PathBuf) -> (Vec<String>, Vec<String>) {
    let mut args = vec!["trace".to_owned(), "--engine".into(), engine.into(), "-o".into(), out.display().to_string()];
    args.extend(specs);
    args.extend(["--".into(), bin.into()]);
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe")).args(&args).output().unwrap();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{engine} {bin}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let program: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
    let event = |l: &str| match l.split_once(" call ") {
        Some((_, call)) => Some(call.to_owned()),
        None => Some(l.split_once(") ")?.1.split_once(" returns")?.0.to_owned()),
    };
    let events: Vec<String> = text.lines().filter(|l| l.starts_with("process ")).filter_map(event).collect();
    assert_eq!(program.len(), 9, "{engine} {bin}: the program's lines");
    (program, events)
}

fn run(engine: &str, bin: &str, lib: &str, out: &PathBuf) -> (Vec<String>, Vec<String>) {
    run_specs(engine, specs(bin, lib), bin, out)
}

/// What the return probes must read, from the program's own lines at the entries: `report`
/// leaves everything as it printed it but `calls`, one more; `lib_step` adds n² to `lib_total`.
fn at_returns(program: &[String]) -> Vec<String> {
    let field = |line: &str, name: &str| -> i64 {
        let from = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}")) + name.len() + 1;
        let digits: String = line[from..].chars().take_while(|c| *c == '-' || c.is_ascii_digit()).collect();
        digits.parse().unwrap()
    };
    program
        .iter()
        .filter_map(|line| {
            if line.starts_with("report(") {
                let (round, level, calls) = (field(line, "round"), field(line, "cfg->level"), field(line, "calls"));
                let left = line
                    .replace(&format!("round={round}, "), "")
                    .replace(&format!(", cfg->level={level}"), "")
                    .replace(&format!("calls={calls},"), &format!("calls={},", calls + 1));
                Some(left)
            } else if line.starts_with("lib_step(") {
                let (n, total) = (field(line, "n"), field(line, "lib_total"));
                Some(format!("lib_step(lib_total={})", total + n * n))
            } else {
                None
            }
        })
        .collect()
}

fn every_build(engine: &str) {
    for cc in ["gcc", "clang"] {
        for opt in ["-O0", "-O2"] {
            for pie in [true, false] {
                let (bin, lib) = build(engine, cc, opt, pie);
                let out = out_file(&format!("globals-{engine}-{cc}{opt}-{pie}"));
                let (program, events) = run(engine, &bin, &lib, &out);
                assert_eq!(events, program, "{engine}, {cc} {opt}, pie {pie}: dprobe's values are the program's own");
                let (program, events) = run_specs(engine, return_specs(&bin, &lib), &bin, &out);
                let want = at_returns(&program);
                assert_eq!(want.len(), 6, "{program:?}");
                assert_eq!(events, want, "{engine}, {cc} {opt}, pie {pie}: the values each function leaves");
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

/// `pick%return total hits` on a function whose exits are not all known (an indirect tail
/// call): its returns are seen through the return address, in its caller, and its globals are
/// still read where its file is.
fn through_the_return_address(engine: &str) {
    let prog = dprobe_test_fixtures::c_program(
        &format!("{FIXTURES}/globals_returns.c"),
        &format!("globals_returns-{engine}"),
        &["-g", "-O2", "-fPIE", "-pie"],
    );
    let out = out_file(&format!("globals-returns-{engine}"));
    let spec = format!("{prog}:pick%return total hits");
    let args = ["trace", "-v", "--engine", engine, "-o", out.to_str().unwrap(), &spec, "--", prog];
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe")).args(args).output().unwrap();
    let (stderr, text) = (String::from_utf8_lossy(&o.stderr), std::fs::read_to_string(&out).unwrap_or_default());
    assert_eq!(o.status.code(), Some(0), "{engine}: {stderr}\n{text}");
    if engine != "kernel" {
        assert!(stderr.contains("returns watched through the return address"), "{engine}: {stderr}");
    }
    let program: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("process "))
        .filter_map(|l| Some(l.split_once(") ")?.1.split_once(" returns")?.0))
        .collect();
    assert_eq!(program.len(), 4, "{engine}: {program:?}");
    assert_eq!(events, program, "{engine}: the globals as `pick` left them\n{text}");
}

#[test]
fn globals_at_a_return_seen_through_the_return_address_ptrace() {
    through_the_return_address("ptrace");
}

#[test]
fn globals_at_a_return_seen_through_the_return_address_agent() {
    through_the_return_address("agent");
}

#[test]
fn globals_at_a_return_seen_through_the_return_address_kernel() {
    through_the_return_address("kernel");
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
        // At a return, a function's parameters and locals are gone; its statics are not.
        (format!("{gcc}:report%return calls round"), "`round` is a parameter of `report`, gone at %return"),
        (format!("{clang}:shadow%return counter"), "`counter` is a parameter of `shadow`, gone at %return"),
        (format!("{gcc}:report%return $params"), "the parameters of `report` are gone at %return"),
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
