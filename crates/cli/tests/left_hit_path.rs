//! A program's signal handler that interrupts dprobe's work at a hit and leaves it for good
//! with `siglongjmp` (a timer cutting a loop short): the hit path's marks were left set, and
//! every later hit on the thread was taken for a nested one (no handler run, counted as
//! missed or not at all). They are found stale and cleared (`dprobe_inproc`'s
//! `abandoned.rs`): the calls after the jumps are all counted, as with ptrace.
mod common;

use common::{hits, missed, trace_to_file};

const JUMPS: &str = r#"
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
static sigjmp_buf out;
static volatile long sink, spins;
static void alarm_handler(int s) { (void)s; siglongjmp(out, 1); }
__attribute__((noinline)) void spin(long x) { sink = x; spins++; }
__attribute__((noinline)) long leaf(long x) { sink = x; return x * 2; }
int main(void) {
    signal(SIGALRM, alarm_handler);
    volatile int jumps = 0;
    for (int k = 0; k < 200; k++) {
        if (sigsetjmp(out, 1) == 0) {
            struct itimerval it = {{0, 0}, {0, 200}};
            setitimer(ITIMER_REAL, &it, 0);
            for (long i = 0;; i++)
                spin(i);
        } else
            jumps++;
    }
    long t = 0;
    for (int i = 0; i < 1000; i++)
        t += leaf(i);
    printf("jumps=%d t=%ld\n", jumps, t);
    fprintf(stderr, "spins=%ld\n", spins);
    return 0;
}
"#;

#[test]
fn hits_after_a_signal_handler_jumped_out_of_a_hit_are_all_counted() {
    let program = common::c_program_from("jumps-out", JUMPS, &["-O1"]);
    let name = program.rsplit_once('/').unwrap().1;
    let (spin, leaf) = (format!("{name}:spin"), format!("{name}:leaf"));
    for engine in ["agent", "ptrace"] {
        let t = trace_to_file(&format!("jumps-out-{engine}"), &["--engine", engine, "-c", &spin, &leaf, "--", program]);
        let what = t.what(engine);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "jumps=200 t=999000\n"), "{what}");
        assert_eq!((hits(&t.trace, &leaf), missed(&t.trace, &leaf)), (1000, 0), "{what}");
        // A hit the timer cut short counts, its call's body never ran: at least every call.
        let spins: u64 = t.stderr.lines().find_map(|l| l.strip_prefix("spins=")).unwrap().parse().unwrap();
        assert!(hits(&t.trace, &spin) >= spins, "{what}");
        assert_eq!(missed(&t.trace, &spin), 0, "{what}");
    }
}
