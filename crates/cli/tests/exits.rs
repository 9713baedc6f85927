//! `dprobe trace` with return probes on functions that leave by `exit`, `_exit`, `longjmp`
//! or `pthread_exit`: the program prints and ends exactly as it does untraced.
mod common;

use common::{dprobe, exits, out_file};
use std::process::Command;

#[test]
fn the_program_ends_as_untraced() {
    for mode in ["exit", "_exit", "longjmp", "pthread_exit"] {
        let untraced = Command::new(exits()).args([mode, "50"]).output().unwrap();
        let out = out_file(&format!("exits-{mode}"));
        let probes = ["leave_on_last%return", "jump_on_odd%return", "end_thread%return", "work%return"];
        let mut args = vec!["trace", "-o", out.to_str().unwrap(), "--count"];
        args.extend(probes);
        args.extend(["--", exits(), mode, "50"]);
        let traced = dprobe(&args);
        assert_eq!(traced.stdout, untraced.stdout, "{mode}: the same output");
        let summary = std::fs::read_to_string(&out).unwrap();
        let code = untraced.status.code().unwrap();
        assert_eq!(traced.status.code(), Some(code), "{mode}: the same status\n{summary}");
        assert!(summary.contains(&format!("exited with status {code}")), "{mode}\n{summary}");
    }
}
