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
