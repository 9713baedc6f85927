//! A glob of hundreds of functions, some of which cannot be probed (some known before any
//! probe is placed, some refused by the engine as it places them): the agent places them
//! together (in messages of a few hundred), the ptrace engine one by one, and each probe
//! counts its own function's calls exactly, whatever was refused before it.
mod common;

use common::{c_program_from, hits, trace_to_file};

/// Functions in the program.
const FUNCTIONS: usize = 600;

/// Whether function `i` starts with a system call: no engine probes it, and dprobe says so
/// before any probe is placed.
fn starts_with_syscall(i: usize) -> bool {
    i % 97 == 5
}

/// Whether function `i` is an indirect function the program never calls: no relocation says
/// which implementation the loader would choose, and the engine refuses it as it places it.
fn indirect(i: usize) -> bool {
    i % 89 == 7
}

/// Whether function `i` cannot be probed.
fn refused(i: usize) -> bool {
    starts_with_syscall(i) || indirect(i)
}

/// How many times the program calls function `i`.
fn calls(i: usize) -> u64 {
    (i % 7) as u64 + 1
}

/// `fn_000` .. `fn_599`, each called `calls(i)` times through a table; those `refused` are
/// never called.
fn program() -> &'static str {
    let mut c = String::from("#include <stdio.h>\n");
    for i in 0..FUNCTIONS {
        c += &if starts_with_syscall(i) {
            format!("__attribute__((naked, noinline)) long fn_{i:03}(long x) {{ __asm__ volatile(\"syscall\\n\\tret\"); }}\n")
        } else if indirect(i) {
            format!(
                "static long impl_{i:03}(long x) {{ return x; }}\n\
                 static void *choose_{i:03}(void) {{ return (void *)impl_{i:03}; }}\n\
                 long fn_{i:03}(long x) __attribute__((ifunc(\"choose_{i:03}\")));\n"
            )
        } else {
            format!("__attribute__((noinline)) long fn_{i:03}(long x) {{ return x + {i}; }}\n")
        };
    }
    c += "long (*const table[])(long) = {\n";
    for i in 0..FUNCTIONS {
        c += &format!("    {},\n", if refused(i) { "0".to_owned() } else { format!("fn_{i:03}") });
    }
    c += "};\nint main(void) {\n    long sum = 0, n = 0;\n";
    c += &format!("    for (int i = 0; i < {FUNCTIONS}; i++)\n");
    c += "        for (int k = 0; table[i] && k <= i % 7; k++) sum += table[i](k), n++;\n";
    c += "    printf(\"%ld calls %ld\\n\", n, sum);\n    return 0;\n}\n";
    // Functions in the order of the source: the indirect ones (their resolvers) among the
    // others, so that a probe refused by the engine has probes placed after it in its message.
    c_program_from("many-probes", &c, &["-O1", "-fno-toplevel-reorder"])
}

#[test]
fn hundreds_of_probes_each_count_their_own_function() {
    let program = program();
    let expected_calls: u64 = (0..FUNCTIONS).filter(|&i| !refused(i)).map(calls).sum();
    let glob = format!("{program}:fn_*");
    for engine in ["agent", "ptrace"] {
        let t = trace_to_file(&format!("many-probes-{engine}"), &["--engine", engine, "--count", &glob, "--", program]);
        let what = t.what(engine);
        assert_eq!(t.code, Some(0), "{what}");
        assert!(t.stdout.starts_with(&format!("{expected_calls} calls ")), "{what}");
        let left_out = (0..FUNCTIONS).filter(|&i| starts_with_syscall(i)).count();
        assert!(t.stderr.contains(&format!("{left_out} of the matching functions cannot be probed")), "{what}");
        for i in (0..FUNCTIONS).filter(|&i| indirect(i)) {
            let said = format!("fn_{i:03} left out: `{program}:fn_{i:03}` is an indirect function");
            assert!(t.stderr.contains(&said), "{said}: {what}");
        }
        for i in 0..FUNCTIONS {
            let probe = format!("{program}:fn_{i:03}");
            match refused(i) {
                true => assert!(!t.trace.contains(&format!("{probe} ")), "{probe} is left out: {what}"),
                false => assert_eq!(hits(&t.trace, &probe), calls(i), "{probe}: {what}"),
            }
        }
    }
}
