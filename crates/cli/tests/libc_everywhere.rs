//! Return probes on every function of the C library, in real programs: `ls /` and a Python
//! workload finish with the output and status they have untraced. (A glob's match that cannot
//! be probed, a function the library only ever inlines, is left out and said so.)
mod common;

use std::process::Command;

use common::out_file;

/// `program ARGS` untraced, then under `dprobe trace --count 'libc:*%return'`: the same
/// standard output and status; dprobe's summary says how it ended.
fn same_as_untraced(name: &str, program: &str, args: &[&str]) {
    let untraced = Command::new(program).args(args).output().unwrap();
    assert!(untraced.status.success(), "{program} untraced: {untraced:?}");
    let out = out_file(name);
    let traced = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--count", "--max-probes", "5000", "-o", out.to_str().unwrap(), "libc:*%return", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert_eq!(traced.status.code(), Some(0), "{stderr}\n{summary}");
    assert_eq!(String::from_utf8_lossy(&traced.stdout), String::from_utf8_lossy(&untraced.stdout), "{summary}");
    assert!(summary.contains("exited with status 0"), "{summary}");
    let malloc = summary.lines().find(|l| l.starts_with("libc:__libc_malloc ")).expect("malloc's line");
    let counts: Vec<u64> = malloc.split_whitespace().skip(1).take(2).map(|n| n.parse().unwrap()).collect();
    assert!(counts[0] > 0 && counts[0] == counts[1], "every malloc call returned: {malloc}");
}

#[test]
fn ls_with_every_libc_function_return_probed() {
    same_as_untraced("libc-ls", "ls", &["/"]);
}

#[test]
fn python_with_every_libc_function_return_probed() {
    let script = "import json, re\n\
                  d = {str(i): i * i for i in range(2000)}\n\
                  print(sum(json.loads(json.dumps(d)).values()), len(re.findall('a+', 'caaab' * 100)))";
    same_as_untraced("libc-python", "/usr/bin/python3", &["-c", script]);
}

/// The ptrace engine places an out-of-line copy for most of the C library's functions, many
/// pages of them near the library, all planned from one look at the process's maps: a page is
/// mapped in the free place nearest the library those maps show, and a later page needs the
/// maps as they are by then. Python started through `env` (as `#!/usr/bin/env python3`
/// scripts and pyenv's shims start it) gets its probes when its loader maps the C library,
/// with few free places near it yet: 1,242 probes were left out, "no free address range
/// within 1 GiB of it".
#[test]
fn python_started_through_env_under_ptrace_gets_a_copy_for_every_libc_probe() {
    let out = out_file("libc-python-ptrace");
    let traced = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--engine", "ptrace", "--count", "--max-probes", "5000", "-o", out.to_str().unwrap()])
        .args(["libc:*", "--", "/usr/bin/env", "/usr/bin/python3", "-c", "print(6 * 7)"])
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert_eq!((traced.status.code(), String::from_utf8_lossy(&traced.stdout).as_ref()), (Some(0), "42\n"), "{stderr}");
    assert!(!stderr.contains("no out-of-line slot") && !summary.contains("no out-of-line slot"), "{stderr}\n{summary}");
    assert!(summary.contains("exited with status 0"), "{summary}");
}
