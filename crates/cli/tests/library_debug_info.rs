//! Functions of a stripped library whose separate debug information is installed (the C
//! library with `libc6-dbg`, which the CI installs): their inlined copies inside the library's
//! `static` functions are probed with them, and a `static` function of the same name in
//! another file of the library is not taken for them, in every engine.
mod common;

use common::{c_program_from, hits, trace_to_file};

/// Calls `tolower` and `link` as many times as its argument says, through pointers (so that
/// no inline copy of the headers' stands in for the library's), and prints how many.
const CALLS: &str = r#"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int (*volatile lower)(int) = tolower;
int (*volatile hard_link)(const char *, const char *) = link;
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10, folded = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        folded += lower('A' + i % 26) != 'A' + i % 26;
        failed += hard_link("/nonexistent/dprobe-a", "/nonexistent/dprobe-b") != 0;
    }
    printf("tolower %d link %d\n", folded, failed);
    return 0;
}
"#;

#[test]
fn a_library_function_with_inlined_copies_is_probed_with_each_engine() {
    let program = c_program_from("library-debug-info", CALLS, &["-O0"]);
    for engine in ["agent", "ptrace", "kernel"] {
        // `tolower` is inlined into `static` functions of the C library's regex code, which
        // only the debug file names; `link` shares its name with a `static` function of
        // glibc's `unwind-resume.c`, inlined into `_Unwind_Resume`. Before, both probes
        // were refused ("no function symbol covers it").
        let mut args = vec!["--engine", engine, "-c", "libc:tolower", "libc:link", "--", program, "300"];
        if engine == "kernel" {
            // A system-wide trace: narrowed to the program by its name.
            args.splice(2..2, ["--comm", "library-debug-i"]);
        }
        let t = trace_to_file(&format!("library-debug-info-{engine}"), &args);
        assert_eq!(t.code, Some(0), "{}", t.what(engine));
        assert_eq!(t.stdout, "tolower 300 link 300\n", "{}", t.what(engine));
        assert_eq!(hits(&t.trace, "libc:tolower"), 300, "{}", t.what(engine));
        assert_eq!(hits(&t.trace, "libc:link"), 300, "{}", t.what(engine));
    }
}
