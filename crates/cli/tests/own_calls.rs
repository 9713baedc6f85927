//! dprobe's own work in the traced process never counts as the program's: the agent places
//! and removes its probes from inside the program (reading `/proc/self/maps`, asking for the
//! process id, talking to dprobe), and none of those calls may reach the user's probes on
//! the same libc functions. The ptrace engine is held to the same figures.
mod common;

use common::hits;
use common::rounds::{program, Rounds, Tracing};

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a row");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn attaching_and_detaching_add_no_call_to_the_programs_figures() {
    let function = format!("{}:round_of", program());
    let probes = [function.as_str(), "libc:open", "libc:getpid%return", "libc:write"];
    for engine in ["ptrace", "agent"] {
        let mut rounds = Rounds::start();
        rounds.run(2);
        let pid = rounds.pid().to_string();
        let mut args = vec!["--engine", engine, "-c", "-p", &pid];
        args.extend_from_slice(&probes);
        let tracing = Tracing::start(&format!("own-calls-{engine}"), &args);
        rounds.run(10);
        let (code, summary, said) = tracing.stop();
        // Untraced again, and unharmed.
        rounds.run(2);
        rounds.finish();
        assert_eq!(code, Some(0), "{engine}: {said}\n{summary}");
        for probe in probes {
            assert_eq!(hits(&summary, probe), 10, "{engine}: {probe}: one call a round\n{said}\n{summary}");
        }
        assert_eq!(returns(&summary, "libc:getpid%return"), 10, "{engine}\n{summary}");
    }
}

const FREES: &str = r#"
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    unsigned long sum = 0;
    for (int i = 0; i < 1000; i++) {
        char *volatile p = malloc(64);
        p[0] = (char)i;
        sum += (unsigned char)p[0];
        free(p);
    }
    char line[] = "done\n";
    return write(1, line, sizeof line - 1) == sizeof line - 1 && sum == 124716 ? 0 : 1;
}
"#;

/// The agent's calls in the program's threads are its own: starting it there leaves nothing
/// for the thread's end (the C library would free a record of the standard library's there,
/// `agent_thread.rs`), and a thread's first hit finds its `errno` and records its state
/// without a call that counts (`__errno_location`, `pthread_setspecific`), as the program's
/// exit reads no clock; at the exit, the finalizers of the agent's library and of the
/// `libgcc_s` it brought call `__cxa_finalize` uncounted (the program's own calls it once).
#[test]
fn a_started_program_is_counted_for_its_own_calls_alone() {
    let program = common::c_program_from("frees", FREES, &["-O2"]);
    let none = ["libc:__errno_location", "libc:pthread_setspecific", "libc:clock_gettime"];
    for engine in ["ptrace", "agent"] {
        let mut args = vec!["--engine", engine, "-c", "libc:malloc", "libc:free", "libc:__cxa_finalize"];
        args.extend_from_slice(&none);
        args.extend_from_slice(&["--", program]);
        let t = common::trace_to_file(&format!("frees-{engine}"), &args);
        let what = t.what(engine);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "done\n"), "{what}");
        assert_eq!((hits(&t.trace, "libc:malloc"), hits(&t.trace, "libc:free")), (1000, 1000), "{what}");
        assert_eq!(hits(&t.trace, "libc:__cxa_finalize"), 1, "{what}");
        for probe in none {
            assert_eq!((hits(&t.trace, probe), common::missed(&t.trace, probe)), (0, 0), "{probe}: {what}");
        }
    }
}

/// Loads a library twice with `dlopen` (its probe waiting, so the agent follows the loader),
/// calling `getpid` and `write` around the loads: 5 and 3 calls of its own.
const LOADS: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    for (int round = 0; round < 2; round++) {
        getpid();
        void *h = dlopen(argv[1], RTLD_NOW);
        if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
        long (*twice)(long) = (long (*)(long))dlsym(h, "plugin_twice");
        if (twice(21) != 42) return 2;
        getpid();
        dlclose(h);
        write(1, "round\n", 6);
    }
    getpid();
    write(1, "done\n", 5);
    return 0;
}
"#;

#[test]
fn following_the_loader_adds_no_call_to_the_programs_figures() {
    let program = common::c_program_from("loads", LOADS, &["-O2"]);
    let plugin = common::plugin();
    let twice = format!("{}:plugin_twice", plugin);
    for engine in ["ptrace", "agent"] {
        let args =
            ["--engine", engine, "-c", "libc:getpid", "libc:write", "libc:syscall", &twice, "--", program, plugin];
        let t = common::trace_to_file(&format!("loads-{engine}"), &args);
        let what = t.what(engine);
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "round\nround\ndone\n"), "{what}");
        assert_eq!(hits(&t.trace, &twice), 2, "{what}");
        assert_eq!(hits(&t.trace, "libc:getpid"), 5, "{what}");
        assert_eq!(hits(&t.trace, "libc:write"), 3, "{what}");
        assert_eq!(hits(&t.trace, "libc:syscall"), 0, "{what}");
    }
}
