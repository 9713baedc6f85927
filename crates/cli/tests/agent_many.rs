//! Every function of the C library traced through the agent (`libc:*`, about 2,200 probes):
//! the agent holds that many, and the probes that stay on `int3` (the C library's `memmove`,
//! which `memcpy` is, on many machines) are held off while the others are placed, then
//! enabled before the program runs: their hits are all counted.
mod common;

use std::process::Command;

use common::{hits, trace_to_file};

const CALLS: &str = r#"
#include <sched.h>
#include <stdio.h>
#include <string.h>
static char a[4096], b[4096];
int main(void) {
    volatile size_t n = 100;
    unsigned sum = 0;
    for (int i = 0; i < 1000; i++) {
        sched_yield();
        a[i % 100] = (char)i;
        memmove(b, a, n);
        sum += (unsigned char)b[i % 100];
    }
    printf("sum=%u\n", sum);
    return 0;
}
"#;

#[test]
fn the_agent_traces_every_function_of_the_c_library() {
    let program = common::c_program_from("libc-calls", CALLS, &["-O2"]);
    let untraced = Command::new(program).output().unwrap();
    let untraced = String::from_utf8_lossy(&untraced.stdout).into_owned();
    assert!(untraced.starts_with("sum="), "{untraced}");

    let t = trace_to_file("agent-libc-all", &["-v", "-c", "--max-probes", "4000", "libc:*", "--", program]);
    let what = t.what("libc:*");
    assert!(t.stderr.contains("dprobe: engine: agent"), "{what}");
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), untraced.as_str()), "{what}");
    let probes = t.trace.lines().filter(|l| l.starts_with("libc:")).count();
    assert!(probes > 1000, "{probes} probes: {what}");
    // Some stay on `int3` (a jump table, a branch into their first bytes): held off, then on.
    assert!(t.stderr.contains(": on int3, a trap per hit"), "{what}");
    assert_eq!(hits(&t.trace, "libc:__sched_yield"), 1000, "{what}");
    assert_eq!(hits(&t.trace, "libc:memmove"), 1000, "{what}");
}
