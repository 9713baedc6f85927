//! A fault signal the program sends itself (`raise(SIGSEGV)`, `pthread_kill`, `kill`) is not
//! a fault: the agent's handler for faults passes it on to what the program had, and for the
//! default action delivers it again, since returning brings no fault back. The program ends by
//! it as untraced, or ignores it as untraced.
mod common;

use common::trace_to_file;

const RAISES: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) int tiny(int x) { return x + 1; }
int main(int argc, char **argv) {
    int sig = atoi(argv[1]);
    if (argc > 2 && strcmp(argv[2], "ignore") == 0)
        signal(sig, SIG_IGN);
    printf("before %d\n", tiny(sig));
    fflush(stdout);
    raise(sig);
    printf("after\n");
    return 0;
}
"#;

#[test]
fn a_fault_signal_the_program_raises_ends_it_or_is_ignored_as_untraced() {
    let program = common::c_program_from("raises", RAISES, &["-O2"]);
    let probe = format!("{}:tiny", program.rsplit_once('/').unwrap().1);
    for (sig, name) in
        [(libc::SIGSEGV, "SIGSEGV"), (libc::SIGBUS, "SIGBUS"), (libc::SIGFPE, "SIGFPE"), (libc::SIGILL, "SIGILL")]
    {
        let number = sig.to_string();
        for how in ["default", "ignore"] {
            let untraced = std::process::Command::new(program).args([number.as_str(), how]).output().unwrap();
            let expected = String::from_utf8_lossy(&untraced.stdout).into_owned();
            let ends = how == "default";
            assert_eq!(expected.contains("after"), !ends, "untraced {name} {how}: {expected}");
            for engine in ["agent", "ptrace"] {
                let args = ["--engine", engine, "-c", probe.as_str(), "--", program, number.as_str(), how];
                let t = trace_to_file(&format!("raises-{engine}-{sig}-{how}"), &args);
                let what = t.what(&format!("{engine} {name} {how}"));
                assert_eq!(t.stdout, expected, "{what}");
                let said = format!("killed by {name}");
                assert_eq!(t.trace.contains(&said) || t.stderr.contains(&said), ends, "{what}");
            }
        }
    }
}
