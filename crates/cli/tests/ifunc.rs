//! Indirect functions (`STT_GNU_IFUNC`, libc's `strlen`, `memcpy`…): a probe on the name
//! lands on the implementation the loader chose for this CPU, which is the code the program
//! runs, so it counts every call.
mod common;

use common::{c_program_from, dprobe, hits, ifunc, trace_to_file, Traced};

#[test]
fn a_probe_on_strlen_counts_every_call_of_the_chosen_implementation() {
    let prog = ifunc();
    for engine in ["ptrace", "agent"] {
        let t = trace_to_file(
            &format!("ifunc-{engine}"),
            &[
                "--engine",
                engine,
                "libc:strlen s=+0($arg1):string",
                "--filter",
                "s == \"dprobe-ifunc-marker\"",
                "--",
                prog,
                "250",
            ],
        );
        let what = t.what(engine);
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, format!("{}\n", 250 * "dprobe-ifunc-marker".len()), "{what}");
        let events = t.trace.lines().filter(|l| l.contains("s=\"dprobe-ifunc-marker\"")).count();
        assert_eq!(events, 250, "{what}");
    }
}

/// Calls `strstr` and `wcsrchr` as many times as its argument says, through pointers (so
/// that no builtin stands in for the library's), and prints what they found.
const UNRECORDED: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
char *(*volatile find)(const char *, const char *) = strstr;
wchar_t *(*volatile find_last)(const wchar_t *, wchar_t) = wcsrchr;
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10;
    long at = 0;
    for (int i = 0; i < n; i++) {
        at += find("dprobe-needle-in-a-haystack", "in-a") - (char *)0 != 0;
        at += find_last(L"a/b/c", L'/') != 0;
    }
    printf("found %ld\n", at);
    return 0;
}
"#;

/// Nothing inside glibc calls `strstr` or `wcsrchr` through its own GOT, so libc holds no
/// record of the loader's choice for them: dprobe runs the C library's resolver to see it
/// (before, both were refused: "the library holds no relocation that records its choice").
#[test]
fn an_indirect_function_whose_library_records_no_choice_counts_every_call() {
    let program = c_program_from("unrecorded-choice", UNRECORDED, &["-O0"]);
    for engine in ["agent", "ptrace", "kernel"] {
        let mut functions = vec!["libc:strstr", "libc:wcsrchr"];
        let mut t = count_calls(engine, program, &functions);
        if engine == "kernel" && t.code == Some(2) && t.stderr.contains(VEX_REFUSED) {
            // Without AVX-512, the loader chooses `__wcsrchr_avx2`, which starts with `vmovd`:
            // the kernel refuses a uprobe there, and dprobe says so, naming it (with AVX-512,
            // `__wcsrchr_evex` starts with a `mov`). `strstr` alone is then counted.
            assert!(t.stderr.contains("`libc:wcsrchr`: `__wcsrchr_avx2+0x0`"), "{}", t.what(engine));
            functions.pop();
            t = count_calls(engine, program, &functions);
        }
        let what = t.what(engine);
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, "found 600\n", "{what}");
        for function in functions {
            assert_eq!(hits(&t.trace, function), 300, "{what}");
        }
    }
}

/// What dprobe says where the kernel cannot place a uprobe on an instruction.
const VEX_REFUSED: &str = "the kernel refuses uprobes on this VEX/EVEX-encoded instruction";

/// `dprobe trace --engine ENGINE -c FUNCTIONS -- program 300`.
fn count_calls(engine: &str, program: &str, functions: &[&str]) -> Traced {
    let mut args = vec!["--engine", engine, "-c"];
    if engine == "kernel" {
        // A system-wide trace: narrowed to the program by its name.
        args.extend(["--comm", "unrecorded-choi"]);
    }
    args.extend_from_slice(functions);
    args.extend(["--", program, "300"]);
    trace_to_file(&format!("unrecorded-choice-{engine}"), &args)
}

/// Calls `floor` and `sin` as many times as its argument says, through pointers (no builtin
/// stands in for the library's), and prints their sum.
const MATHS: &str = r#"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
double (*volatile round_down)(double) = floor;
double (*volatile sine)(double) = sin;
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += round_down(i * 0.37) + sine(i * 0.01);
    printf("%.6f\n", sum);
    return 0;
}
"#;

/// The maths library's indirect functions (`floor`, `sin`: only the program's own calls choose
/// them, so libm records no choice): dprobe runs libm's resolver, as the C library's, and every
/// call is counted (before, both were refused).
#[test]
fn the_maths_librarys_indirect_functions_count_every_call() {
    let program = c_program_from("maths-choice", MATHS, &["-O1", "-Wl,--no-as-needed", "-lm"]);
    let untraced = std::process::Command::new(program).arg("300").output().unwrap();
    assert!(untraced.status.success());
    let untraced = String::from_utf8(untraced.stdout).unwrap();
    for engine in ["agent", "ptrace", "kernel"] {
        let mut args = vec!["--engine", engine, "-c", "libm:floor", "libm:sin", "--", program, "300"];
        if engine == "kernel" {
            args.splice(2..2, ["--comm", "maths-choice"]);
        }
        let t = trace_to_file(&format!("maths-choice-{engine}"), &args);
        let what = t.what(engine);
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, untraced, "{what}");
        assert_eq!(hits(&t.trace, "libm:floor"), 300, "{what}");
        assert_eq!(hits(&t.trace, "libm:sin"), 300, "{what}");
    }
}

/// Loads the maths library with `dlopen` and calls its `floor` and its `cos` 300 times each
/// (libm records no choice for `floor`, and one for `cos`).
const MATHS_LOADED_LATER: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    void *maths = dlopen("libm.so.6", RTLD_NOW);
    double (*round_down)(double) = dlsym(maths, "floor");
    double (*cosine)(double) = dlsym(maths, "cos");
    double sum = 0;
    for (int i = 0; i < 300; i++) sum += round_down(i * 0.37) + cosine(i * 0.01);
    printf("%.3f\n", sum);
    return 0;
}
"#;

/// A `libm` the program loads itself: the ptrace engine resolves `floor` in dprobe's own
/// process and counts every call. The agent, inside the program, places the probes of a
/// library being loaded before the loader relocates it, where the library's record of the
/// choice is still empty and its resolvers cannot run: dprobe hands it the choice of its own
/// copy of `libm`, and every call is counted too. Where the program or dprobe starts with
/// `GLIBC_TUNABLES` (which may change the choice) none is handed over: the probe is said not
/// placed, with why, not "never loaded".
#[test]
fn the_maths_library_loaded_later_is_resolved_from_outside() {
    let program = c_program_from("maths-loaded-later", MATHS_LOADED_LATER, &["-O1"]);
    let untraced = std::process::Command::new(program).output().unwrap();
    assert!(untraced.status.success());
    let untraced = String::from_utf8(untraced.stdout).unwrap();
    for engine in ["ptrace", "agent"] {
        let args = ["--engine", engine, "-c", "libm:floor", "libm:cos", "--", program];
        let t = trace_to_file(&format!("maths-later-{engine}"), &args);
        let what = t.what(engine);
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, untraced, "{what}");
        assert_eq!(hits(&t.trace, "libm:floor"), 300, "{what}");
        assert_eq!(hits(&t.trace, "libm:cos"), 300, "{what}");
    }
    // (A tunable that changes nothing: its presence alone is the question.) In the program's
    // environment, then in dprobe's.
    const TUNED: &str = "GLIBC_TUNABLES=glibc.malloc.check=0";
    let in_the_program = ["--engine", "agent", "-c", "libm:floor", "libm:cos", "--", "env", TUNED, program];
    let t = trace_to_file("maths-later-tuned", &in_the_program);
    said_not_placed(&t, &untraced, "the program tuned");
    let file = common::out_file("maths-later-tuned-dprobe");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .env("GLIBC_TUNABLES", TUNED.trim_start_matches("GLIBC_TUNABLES="))
        .args(["trace", "-o", file.to_str().unwrap(), "--engine", "agent", "-c", "libm:floor", "libm:cos"])
        .args(["--", "env", "-u", "GLIBC_TUNABLES", program])
        .output()
        .unwrap();
    let t = Traced {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        trace: std::fs::read_to_string(&file).unwrap_or_default(),
    };
    said_not_placed(&t, &untraced, "dprobe tuned");
}

/// The program ran as `untraced`, and neither `libm:floor` nor `libm:cos` was placed, with why.
fn said_not_placed(t: &Traced, untraced: &str, case: &str) {
    let what = t.what(case);
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), untraced), "{what}");
    for probe in ["libm:floor", "libm:cos"] {
        assert_eq!(hits(&t.trace, probe), 0, "{what}");
        assert!(t.trace.contains(&format!("{probe}: not placed: its library was loaded, and the agent")), "{what}");
    }
    assert!(!t.trace.contains("never loaded"), "{what}");
}

/// `time` chooses the kernel's vDSO, which is mapped elsewhere in each process and cannot be
/// probed: refused with that reason, and nothing runs.
#[test]
fn an_indirect_function_that_chooses_the_vdso_is_refused_with_the_reason() {
    let o = dprobe(&["trace", "libc:time", "--", "true"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("`libc:time` is an indirect function"), "{stderr}");
    assert!(stderr.contains("the kernel's vDSO"), "{stderr}");
}

#[test]
fn an_offset_into_an_indirect_function_is_refused_with_the_reason() {
    let o = dprobe(&["trace", "libc:strlen+4", "--", "true"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("`libc:strlen` is an indirect function"), "{stderr}");
    assert!(stderr.contains("an offset into its resolver is not code that callers run"), "{stderr}");
}

#[test]
fn list_marks_indirect_functions() {
    // The libc this test runs with is the one the system's programs run with.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libc.so.6")).unwrap();
    let o = dprobe(&["list", libc, "str*"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    // Each line is `libc.so.6:NAME@@VERSION`, then the mark for an indirect function.
    let line = |name: &str| {
        let prefix = format!("libc.so.6:{name}@");
        stdout.lines().find(|l| l.starts_with(&prefix)).map(|l| l.split_once(' ').map_or("", |(_, mark)| mark))
    };
    let mark = "(indirect: probes the implementation the loader chose)";
    assert_eq!(line("strlen"), Some(mark), "{stdout}");
    assert_eq!(line("strcmp"), Some(mark), "{stdout}");
    // An ordinary function has no mark.
    assert_eq!(line("strerror"), Some(""), "{stdout}");
}

/// `memcpy` and `memset` are also functions the in-process hit path itself calls: probed, the
/// program runs as untraced and every one of its calls is counted, the same by both engines;
/// none of dprobe's own calls is counted, as missed or otherwise. (glibc's `mempcpy` branches
/// into the first bytes of `memcpy`'s implementation: the agent keeps that probe on `int3`.)
#[test]
fn memcpy_and_memset_probed_leave_the_program_as_it_was() {
    let prog = common::mem_calls();
    let untraced = std::process::Command::new(prog).arg("300").output().unwrap();
    assert_eq!(untraced.status.code(), Some(0));
    let untraced = String::from_utf8(untraced.stdout).unwrap();
    let mut counted = std::collections::HashMap::new();
    for (engine, func, size) in
        [("agent", "memset", 4327), ("ptrace", "memset", 4327), ("agent", "memcpy", 4321), ("ptrace", "memcpy", 4321)]
    {
        let probe = format!("libc:{func} n=$arg3");
        let filter = format!("n == {size}");
        let t = trace_to_file(
            &format!("mem-{engine}-{func}"),
            &["--engine", engine, &probe, "--filter", &filter, "--", prog, "300"],
        );
        let what = t.what(&format!("{engine} {func}"));
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, untraced, "{what}");
        let events = t.trace.lines().filter(|l| l.contains(&format!("call {func}(n={size:#x})"))).count();
        assert_eq!(events, 300, "the program's calls of {func} with its size\n{what}");

        // Every call counted, not only the program's own: the program still runs as untraced.
        let t = trace_to_file(
            &format!("mem-count-{engine}-{func}"),
            &["--engine", engine, "--count", &format!("libc:{func}"), "--", prog, "300"],
        );
        let what = t.what(&format!("{engine} --count {func}"));
        assert_eq!(t.code, Some(0), "{what}");
        assert_eq!(t.stdout, untraced, "{what}");
        let hits = common::hits(&t.trace, &format!("libc:{func}"));
        assert!(hits >= 300, "{what}");
        assert_eq!(common::missed(&t.trace, &format!("libc:{func}")), 0, "{what}");
        counted.entry(func).or_insert_with(Vec::new).push((engine, hits));
    }
    for (func, by_engine) in counted {
        assert_eq!(by_engine[0].1, by_engine[1].1, "{func}: the program's calls counted by each engine: {by_engine:?}");
    }
}

/// `dprobe list` takes a library and pattern as a probe spec gives them (`libm:floor`): the
/// library found by name, as `dprobe trace` finds it; a library that is nowhere is said so.
#[test]
fn list_takes_a_library_and_pattern_as_a_spec_gives_them() {
    let o = dprobe(&["list", "libm:floor"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.starts_with("libm.so.6:floor@"), "{stdout}");
    assert!(stdout.contains("(indirect: probes the implementation the loader chose)"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let o = dprobe(&["list", "libnothere:f"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no library `libnothere` in the system's library directories"), "{stderr}");
}
