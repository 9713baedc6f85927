//! `dprobe trace` with variables by name (`req->hdr.len`, `argv[1]`, `$params`) read from the
//! DWARF: every value printed equals what the program prints of its own arguments for the
//! same call, for gcc and clang at -O0 and -O2, in the ptrace, agent and kernel engines. The
//! kernel cases use the system's tracefs (run them under the project's full-test lock).
mod common;

use std::process::Command;

use common::{out_file, vars_program};

/// The fixture's line that prints `scale`'s locals (marked `LOCALS`).
fn locals_line() -> usize {
    let source = include_str!("../../dwarf/tests/fixtures/vars.c");
    1 + source.lines().position(|l| l.contains("/* LOCALS */")).expect("the fixture marks its LOCALS line")
}

/// What the fixture's functions print of themselves, and what dprobe fetches for the same:
/// arguments at the functions' entries, and locals at a source line.
fn specs(bin: &str) -> Vec<String> {
    [
        "parse_request req->id req->hdr.len req->hdr.kind req->hdr.tag req->method req->path req->codes[2] \
         req->urgent req->flags len name"
            .to_owned(),
        "count_args argc argv[1] argv[2]".into(),
        "mix $params".into(),
        format!("vars.c:{} total label", locals_line()),
    ]
    .iter()
    .map(|s| format!("{bin}:{s}"))
    .collect()
}

/// The program's own line, with `scale(` (printed at the probed line) as dprobe names that
/// probe: by its line.
fn as_probed(line: &str) -> String {
    match line.strip_prefix("scale(") {
        Some(rest) => format!("vars.c:{}({rest}", locals_line()),
        None => line.to_owned(),
    }
}

/// Run the fixture under `dprobe trace --engine ENGINE`: (the program's own lines, dprobe's
/// event lines from `call ` on).
fn run(engine: &str, bin: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let out = out_file(name);
    let mut args = vec!["trace".to_owned(), "--engine".into(), engine.into(), "-o".into(), out.display().to_string()];
    args.extend(specs(bin));
    args.extend(["--".into(), bin.into(), "one".into(), "two".into()]);
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe")).args(&args).output().unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{engine} {bin}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let program: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(as_probed).collect();
    let events: Vec<String> = text.lines().filter_map(|l| l.split_once(" call ")).map(|(_, c)| c.to_owned()).collect();
    assert_eq!(program.len(), 8, "{engine} {bin}: the program's lines");
    (program, events)
}

fn every_build(engine: &str) {
    for cc in ["gcc", "clang"] {
        for opt in ["-O0", "-O2"] {
            // A file of each engine's own: the kernel's uprobes are in every process that maps
            // the file they are on, and another engine would find their int3s in the code.
            let bin = vars_program(cc, opt, &[]);
            let own = format!("{bin}-{engine}");
            std::fs::copy(&bin, &own).unwrap();
            let (program, events) = run(engine, &own, &format!("vars-{engine}-{cc}{opt}"));
            assert_eq!(events, program, "{engine}, {cc} {opt}: dprobe's values are the program's own");
        }
    }
}

#[test]
fn variables_by_name_equal_the_programs_own_values_ptrace() {
    every_build("ptrace");
}

#[test]
fn variables_by_name_equal_the_programs_own_values_agent() {
    every_build("agent");
}

#[test]
fn variables_by_name_equal_the_programs_own_values_kernel() {
    every_build("kernel");
}

/// `*PATH` reads what PATH points to, as C does: `*argv` is the program's path (`argv[0]`),
/// `**argv` its first character, in the ptrace and agent engines.
#[test]
fn a_star_reads_what_a_pointer_points_to() {
    for engine in ["ptrace", "agent"] {
        for opt in ["-O0", "-O2"] {
            let bin = vars_program("gcc", opt, &[]);
            let out = out_file(&format!("vars-deref-{engine}{opt}"));
            let spec = format!("{bin}:count_args *argv **argv argv[2]");
            let args = ["trace", "--engine", engine, "-o", out.to_str().unwrap(), &spec, "--", &bin, "one", "two"];
            let o = common::dprobe(&args);
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            assert_eq!(o.status.code(), Some(0), "{engine} {opt}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
            let first = bin.as_bytes()[0];
            let want = format!("count_args(*argv=\"{bin}\", **argv={first}, argv[2]=\"two\")");
            assert!(text.lines().any(|l| l.ends_with(&format!(" call {want}"))), "{engine} {opt}: {want}\n{text}");
        }
    }
}

/// `dprobe list FILE FUNCTION --args`.
fn list_args(bin: &str, function: &str) -> String {
    let o = common::dprobe(&["list", bin, function, "--args"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn list_args_prints_the_signature_and_where_each_variable_is() {
    let o0 = list_args(&vars_program("gcc", "-O0", &[]), "parse_request");
    assert!(o0.starts_with("int parse_request(struct request * req, int len, const char * name)\n"), "{o0}");
    assert!(o0.contains("after the prologue"), "-O0 parameters are read from their stack slots\n{o0}");
    assert!(o0.lines().any(|l| l.contains("param  int len") && l.ends_with("(%bp)")), "{o0}");
    let o2 = list_args(&vars_program("gcc", "-O2", &[]), "mix");
    assert!(o2.contains("variables at the entry"), "{o2}");
    assert!(o2.lines().any(|l| l.contains("param  long unsigned int seed") && l.ends_with("%di")), "{o2}");
    let acc = o2.lines().find(|l| l.contains("local  long unsigned int acc")).unwrap_or_else(|| panic!("{o2}"));
    assert!(acc.contains("optimized out here; available at lines"), "{acc}");
}

/// Removes the files (and their directory when emptied) even when the test fails.
struct Remove(Vec<std::path::PathBuf>);

impl Drop for Remove {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
            if let Some(dir) = f.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// A copy of the fixture with its DWARF moved out (`objcopy --only-keep-debug`, `strip
/// --strip-debug`), as distributions ship programs; returns (binary, debug file, build-id).
fn stripped(name: &str) -> (String, std::path::PathBuf, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("d9b1{:08x}{:024x}", std::process::id(), nanos);
    let bin = vars_program("gcc", "-O2", &[&format!("-Wl,--build-id=0x{id}")]);
    let copy = format!("{bin}-{name}");
    std::fs::copy(&bin, &copy).unwrap();
    let debug = out_file(&format!("{name}.debug"));
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("objcopy").arg("--only-keep-debug").arg(&copy).arg(&debug));
    run(Command::new("strip").arg("--strip-debug").arg(&copy));
    (copy, debug, id)
}

#[test]
fn a_stripped_binary_gets_names_from_its_debug_file_under_the_build_id_directory() {
    let (bin, debug, id) = stripped("stripped");
    let place = std::path::Path::new("/usr/lib/debug/.build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(place.parent().unwrap()).expect("root can write /usr/lib/debug");
    let _cleanup = Remove(vec![place.clone()]);
    std::fs::copy(&debug, &place).unwrap();
    let (program, events) = run("ptrace", &bin, "vars-stripped");
    assert_eq!(events, program);
    assert!(list_args(&bin, "parse_request").contains(&format!("DWARF by build-id in {}", place.display())));
}

/// Names that cannot be fetched, each refused before anything is placed with its reason.
#[test]
fn bad_names_are_refused_with_the_reason() {
    let o0 = vars_program("gcc", "-O0", &[]);
    let o2 = vars_program("gcc", "-O2", &[]);
    let (no_dwarf, _, _) = stripped("no-dwarf");
    let p = |bin: &str, rest: &str| format!("{bin}:{rest}");
    let cases: Vec<(String, String)> = vec![
        (p(&o0, "parse_request nosuch"), "no variable `nosuch` in parse_request here; known: req, len, name".into()),
        (p(&o0, "parse_request req->nope"), "struct request has no member `nope`; its members: id, hdr, method".into()),
        (p(&o0, "parse_request len->x"), "`len` is an int, which has no members".into()),
        (p(&o0, "parse_request req.id"), "`req` is a pointer (struct request *): use `->`".into()),
        (p(&o0, "parse_request req->hdr->len"), "`req->hdr` is a struct header, not a pointer: use `.`".into()),
        (p(&o0, "parse_request req->hdr"), "is a struct header; name a member: req->hdr.len, req->hdr.kind".into()),
        (p(&o0, "parse_request req->codes"), "is an array (int[4]); name an element: req->codes[0]".into()),
        (p(&o0, "parse_request req->codes[4]"), "`req->codes` has 4 elements".into()),
        (p(&o0, "parse_request len[1]"), "`len` is an int, which cannot be indexed".into()),
        (p(&o0, "parse_request req->hdr.tag[x]"), "`req->hdr.tag[x]`: expected a number inside [ ]".into()),
        (p(&o2, "mix acc"), "`acc` is optimized out here; available at lines".into()),
        (p(&o0, "parse_request%return len"), "`len` is a parameter of `parse_request`, gone at %return".into()),
        (p(&o0, "no_such_function x"), "no function `no_such_function` in the DWARF".into()),
        (p(&o0, "parse_request *len"), "`len` is an int, not a pointer: `*` reads what a pointer points to".into()),
        (p(&o0, "parse_request *req"), "`*req` is a struct request; name a member".into()),
        ("kernel:do_sys_openat2 filename".into(), "read from a user-space binary's DWARF".into()),
        (
            p(&no_dwarf, "parse_request req"),
            format!("no DWARF for {no_dwarf} (looked in {no_dwarf}, /usr/lib/debug/.build-id/"),
        ),
        (p(&no_dwarf, "parse_request req"), "rebuild it with -g, or install its debug symbols".into()),
    ];
    for (spec, expected) in &cases {
        let o = common::dprobe(&["trace", "--engine", "ptrace", spec, "--", &o0]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{spec}: {stderr}");
        assert!(stderr.contains(expected.as_str()), "{spec}: expected {expected:?} in:\n{stderr}");
        assert!(o.stdout.is_empty(), "{spec}: the program never ran");
    }
}
