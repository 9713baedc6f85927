//! `dprobe trace` with return probes on functions a C++ exception goes through, with each
//! engine that traces one program.
mod common;

use common::{hits, not_seen, throws, trace};

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_program_throwing_through_return_probes_runs_as_untraced() {
    let probes = ["inner%return", "middle%return", "outer%return"];
    // Both engines watch the returns at the functions' exits: `outer`, which catches, returns
    // each time; the calls the exception went through are told as not seen.
    for engine in ["ptrace", "agent"] {
        let mut args = vec!["--engine", engine, "--count"];
        args.extend(probes);
        // The unwinder's own entry: its exception-throwing path ends in a jump to the
        // handler's frame (`__builtin_eh_return`), not a return; were its return address
        // replaced, the unwinder would start from the trampoline and every throw terminate.
        let unwinder = "libgcc_s:_Unwind_RaiseException%return";
        // A `+` in a library's name is part of the name.
        args.extend([unwinder, "libstdc++:__cxa_throw", "--", throws(), "90"]);
        let (code, out) = trace(&format!("{engine}-throws"), &args);
        assert_eq!(code, Some(0), "{engine}: no terminate, every result right\n{out}");
        let counts: Vec<_> = probes.iter().map(|p| (hits(&out, p), returns(&out, p))).collect();
        assert_eq!(counts, [(90, 60), (90, 60), (90, 90)], "{engine}\n{out}");
        for p in probes {
            // Every call either returned where it was seen or is told as not seen: none is lost.
            assert_eq!(returns(&out, p) + not_seen(&out, p), 90, "{engine}: {p}\n{out}");
        }
        assert_eq!(not_seen(&out, "inner%return"), 30, "{engine}: the unwound calls are told\n{out}");
        assert_eq!(hits(&out, "libstdc++:__cxa_throw"), 30, "{engine}: one throw every third call\n{out}");
        let unwound = (hits(&out, unwinder), returns(&out, unwinder), not_seen(&out, unwinder));
        assert_eq!(unwound, (30, 0, 30), "{engine}: each throw left the unwinder for its handler\n{out}");
    }
}
