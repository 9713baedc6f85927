//! A program's own `SIGTRAP` handler is still its own after `dprobe trace -p` with the ptrace
//! engine, even when the thread dprobe makes execute its system calls blocks `SIGTRAP`: the
//! kernel resets the action of a forced signal the thread blocks (the step's trap) to the
//! default, for the whole process, and the program's next trap would kill it. (dprobe's agent,
//! loaded by an earlier trace, is such a program: its handler was lost that way.)
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{dprobe_command, out_file};

/// A program whose one thread blocks `SIGTRAP` and waits for `SIGUSR1` in `pause`; then it
/// says whether its `SIGTRAP` handler is still in place and raises one (exit 0: kept and run).
const PROGRAM: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile sig_atomic_t traps, go;
static void on_trap(int s) { (void)s; traps++; }
static void on_usr1(int s) { (void)s; go = 1; }
__attribute__((noinline)) long probed_here(long x) { __asm__ volatile("" ::: "memory"); return x * 3 + 1; }
int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_trap;
    sigaction(SIGTRAP, &sa, 0);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    sigprocmask(SIG_BLOCK, &trap, 0);
    printf("ready %ld\n", probed_here(1));
    fflush(stdout);
    while (!go)
        pause();
    struct sigaction now;
    sigaction(SIGTRAP, 0, &now);
    int kept = now.sa_handler == on_trap;
    sigprocmask(SIG_UNBLOCK, &trap, 0);
    if (kept)
        raise(SIGTRAP);
    printf("kept=%d traps=%d\n", kept, (int)traps);
    return kept && traps == 1 ? 0 : 1;
}
"#;

fn program() -> &'static str {
    let src = out_file("trap_handler_kept.c");
    std::fs::write(&src, PROGRAM).unwrap();
    dprobe_test_fixtures::c_program(src.to_str().unwrap(), "trap-handler-kept", &["-O2"])
}

/// The program, killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_programs_trap_handler_survives_an_attach_whose_thread_blocks_sigtrap() {
    let mut running = Running(Command::new(program()).stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap());
    let child = &mut running.0;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready 4\n");
    let pid = child.id().to_string();
    let trace = out_file("trap-handler-kept.txt");
    // The probe's displaced instruction runs out of line: dprobe maps its page with a system
    // call the blocked thread executes (a single step).
    let o = dprobe_command()
        .args(["trace", "--engine", "ptrace", "-c", "-d", "100ms", "-o", trace.to_str().unwrap(), "-p", &pid])
        .arg("probed_here")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    // SAFETY: signals our own child, which handles SIGUSR1.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(0), "kept=1 traps=1\n"), "{status:?}\n{stderr}");
}
