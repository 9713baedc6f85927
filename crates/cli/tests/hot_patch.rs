//! A program that rewrites its own probed code (a hot patch: a `jmp` over a function's first
//! bytes) while traced keeps what it wrote when dprobe detaches: dprobe takes away only its own
//! `int3` (the ptrace engine) or its own jump (the agent), never the program's `jmp`.
mod common;

const HOT_PATCH: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) long target(long x) { sink = x; if (x > 5) sink += x * 3; return x + 1; }
__attribute__((noinline)) long replacement(long x) { sink = x; return x + 100; }
/* Two calls, the patch, one call, then (once the file argv[1] exists: the tracer has gone)
 * three more. */
int main(int argc, char **argv) {
    unsigned char *p = (unsigned char *)target;
    for (int k = 0; k < 2; k++) {
        printf("before(1)=%ld\n", target(1));
        fflush(stdout);
    }
    long page = sysconf(_SC_PAGESIZE);
    void *base = (void *)((uintptr_t)p & ~(uintptr_t)(page - 1));
    if (argc < 2 || mprotect(base, 2 * page, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        return 9;
    int32_t rel = (int32_t)((unsigned char *)replacement - (p + 5));
    p[0] = 0xe9;
    memcpy(p + 1, &rel, 4);
    mprotect(base, 2 * page, PROT_READ | PROT_EXEC);
    for (int k = 0; k < 4; k++) {
        printf("target(1)=%ld\n", target(1));
        fflush(stdout);
        for (int wait = 0; k == 0 && access(argv[1], F_OK) != 0; wait++) {
            if (wait == 120000) return 8;
            usleep(1000);
        }
    }
    return 0;
}
"#;

#[test]
fn a_hot_patch_the_program_wrote_over_a_probe_stays_after_the_detach() {
    use std::io::{BufRead, Read};
    let program = common::c_program_from("hot-patch", HOT_PATCH, &["-O1"]);
    let probe = format!("{}:target", program.rsplit_once('/').unwrap().1);
    let untraced = format!("{}{}", "before(1)=2\n".repeat(2), "target(1)=101\n".repeat(4));
    for engine in ["ptrace", "agent"] {
        // Stopped (SIGINT) once the patch ran, while the program waits for the tracer to go.
        let (out, gone) =
            (common::out_file(&format!("hot-patch-{engine}")), common::out_file(&format!("gone-{engine}")));
        let _ = std::fs::remove_file(&gone);
        let mut dprobe = common::dprobe_command()
            .args(["trace", "-o", out.to_str().unwrap(), "--engine", engine, "-c", &probe, "--", program])
            .arg(&gone)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut printed = std::io::BufReader::new(dprobe.stdout.take().unwrap());
        let mut seen = String::new();
        while !seen.contains("target(1)") && printed.read_line(&mut seen).unwrap() > 0 {}
        // SAFETY: kill takes no pointer; dprobe is this test's child, not yet waited for.
        assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
        let status = dprobe.wait().unwrap();
        // (The program holds dprobe's standard error too: read once it has ended.)
        std::fs::write(&gone, "").unwrap();
        printed.read_to_string(&mut seen).unwrap();
        let mut stderr = String::new();
        dprobe.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let trace = std::fs::read_to_string(&out).unwrap_or_default();
        let what = format!("{engine}: {stderr}\n{trace}");
        assert!(trace.contains("goes on untraced"), "detached while it ran: {what}");
        assert_eq!((status.code(), seen.as_str()), (Some(0), untraced.as_str()), "{what}");
        let hits = trace.lines().find(|l| l.contains(":target")).and_then(|l| l.split_whitespace().nth(1));
        assert_eq!(hits, Some("2"), "the calls before the patch: {what}");
    }
}
