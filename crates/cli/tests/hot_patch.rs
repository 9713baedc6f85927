//! A program that rewrites its own probed code (a hot patch: a `jmp` over a function's first
//! bytes) keeps what it wrote when dprobe detaches: the ptrace engine puts a site's original
//! byte back only over its own `int3`.
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
        usleep(400000);
    }
    return 0;
}
"#;

#[test]
fn a_hot_patch_the_program_wrote_over_a_probe_stays_after_the_detach() {
    let program = common::c_program_from("hot-patch", HOT_PATCH, &["-O1"]);
    let probe = format!("{}:target", program.rsplit_once('/').unwrap().1);
    let t = trace_to_file("hot-patch-ptrace", &["--engine", "ptrace", "-d", "600ms", "-c", &probe, "--", program]);
    let what = t.what("ptrace");
    assert!(t.trace.contains("goes on untraced"), "detached while it ran: {what}");
    assert_eq!((t.code, t.stdout.as_str()), (Some(0), "target(1)=101\n".repeat(4).as_str()), "{what}");
}
