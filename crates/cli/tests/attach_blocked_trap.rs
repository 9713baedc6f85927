//! `dprobe trace -p` (ptrace) on a program that blocks `SIGTRAP`: the kernel unblocks it in a
//! thread at each of dprobe's traps there; dprobe blocks it again, so that the program finds
//! its mask as it set it, and a `SIGTRAP` of its own after dprobe has gone stays pending, as
//! untraced, instead of killing it.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{c_program_from, dprobe_command, hits, out_file};

/// Blocks `SIGTRAP` (and `SIGUSR1`, which it waits for between calls of `step`), then says
/// `ready`; told, it prints whether `SIGTRAP` is still blocked, raises one and says
/// `survived`.
const BLOCKS_TRAPS: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <time.h>
static volatile long count;
__attribute__((noinline)) long step(long x) { count++; return x + 1; }
int main(void) {
    sigset_t s, go, now;
    sigemptyset(&s); sigaddset(&s, SIGTRAP); sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, 0);
    sigemptyset(&go); sigaddset(&go, SIGUSR1);
    printf("ready\n"); fflush(stdout);
    struct timespec wait = {0, 1000000};
    long a = 0;
    do { a = step(a); } while (sigtimedwait(&go, 0, &wait) != SIGUSR1);
    sigprocmask(SIG_SETMASK, 0, &now);
    printf("blocked=%d\n", sigismember(&now, SIGTRAP)); fflush(stdout);
    raise(SIGTRAP);
    printf("survived\n");
    return a > 0 ? 0 : 1;
}
"#;

#[test]
fn a_thread_that_blocks_sigtrap_finds_it_blocked_after_dprobe_attached_and_left() {
    let program = c_program_from("blocks-traps", BLOCKS_TRAPS, &["-O1"]);
    let mut child = Command::new(program).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id().to_string();
    let file = out_file("blocks-traps.trace");
    let spec = format!("{program}:step");
    let status = dprobe_command()
        .args(["trace", "--engine", "ptrace", "--count", "-d", "300ms", "-o", file.to_str().unwrap(), "-p", &pid])
        .arg(&spec)
        .status()
        .unwrap();
    let summary = std::fs::read_to_string(&file).unwrap();
    assert_eq!(status.code(), Some(0), "{summary}");
    assert!(hits(&summary, &spec) > 0, "{summary}");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let code = child.wait().unwrap();
    assert_eq!((rest.as_str(), code.code()), ("blocked=1\nsurvived\n", Some(0)), "{code:?}");
}
