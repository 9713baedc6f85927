//! A program that rewrites its own probed code (a hot patch: a `jmp` over a function's first
//! bytes) while traced keeps what it wrote when dprobe detaches: dprobe takes away only its own
//! `int3` (the ptrace engine) or its own jump (the agent), never the program's `jmp`.
mod common;

use common::trace_to_file;

const HOT_PATCH: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) long target(long x) { sink = x; if (x > 5) sink += x * 3; return x + 1; }
__attribute__((noinline)) long replacement(long x) { sink = x; return x + 100; }
int main(void) {
    unsigned char *p = (unsigned char *)target;
    for (int k = 0; k < 2; k++) {
        printf("before(1)=%ld\n", target(1));
        fflush(stdout);
        usleep(200000);
    }
    long page = sysconf(_SC_PAGESIZE);
    void *base = (void *)((uintptr_t)p & ~(uintptr_t)(page - 1));
    if (mprotect(base, 2 * page, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        return 9;
    int32_t rel = (int32_t)((unsigned char *)replacement - (p + 5));
    p[0] = 0xe9;
    memcpy(p + 1, &rel, 4);
    mprotect(base, 2 * page, PROT_READ | PROT_EXEC);
    for (int k = 0; k < 4; k++) {
        printf("target(1)=%ld\n", target(1));
        fflush(stdout);
        usleep(300000);
    }
    return 0;
}
"#;

#[test]
fn a_hot_patch_the_program_wrote_over_a_probe_stays_after_the_detach() {
    let program = common::c_program_from("hot-patch", HOT_PATCH, &["-O1"]);
    let probe = format!("{}:target", program.rsplit_once('/').unwrap().1);
    let untraced = format!("{}{}", "before(1)=2\n".repeat(2), "target(1)=101\n".repeat(4));
    for engine in ["ptrace", "agent"] {
        // Detached while the patch runs (written at about 0.4 s, the last call at 1.3 s).
        let t = trace_to_file(
            &format!("hot-patch-{engine}"),
            &["--engine", engine, "-d", "900ms", "-c", &probe, "--", program],
        );
        let what = t.what(engine);
        assert!(t.trace.contains("goes on untraced"), "detached while it ran: {what}");
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), untraced.as_str()), "{what}");
        let hits = t.trace.lines().find(|l| l.contains(":target")).and_then(|l| l.split_whitespace().nth(1));
        assert_eq!(hits, Some("2"), "the calls before the patch: {what}");
    }
}
