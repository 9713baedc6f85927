//! The summary printed when a trace ends: per probe, its hits and what was missed and why.

use std::fmt::Write as _;

use dprobe_ptrace::ProbeStats;

/// One probe's line.
pub struct ProbeLine {
    /// The spec as written.
    pub spec: String,
    /// The engine's counters.
    pub stats: ProbeStats,
    /// Events that passed the filter.
    pub shown: u64,
}

/// The whole summary: histograms first, then the table, the reasons, and how it ended.
pub fn render(
    lines: &[ProbeLine],
    hists: &[(String, String)],
    extra_notes: &[String],
    ending: &str,
    filtered: bool,
) -> String {
    let mut out = String::new();
    for (title, table) in hists {
        let _ = writeln!(out, "\n@{title}:\n{table}");
    }
    let width = lines.iter().map(|l| target_of(&l.spec).len()).max().unwrap_or(5).max(5);
    let _ = write!(out, "\n{:<width$} {:>10} {:>10} {:>8}", "PROBE", "HITS", "RETURNS", "MISSED");
    if filtered {
        let _ = write!(out, " {:>10}", "MATCHED");
    }
    out.push('\n');
    let mut notes = Vec::new();
    for l in lines {
        let s = &l.stats;
        let returns =
            if s.returns > 0 || target_of(&l.spec).ends_with("%return") { s.returns.to_string() } else { "-".into() };
        let _ = write!(out, "{:<width$} {:>10} {:>10} {:>8}", target_of(&l.spec), s.hits, returns, s.missed);
        if filtered {
            let _ = write!(out, " {:>10}", l.shown);
        }
        out.push('\n');
        let target = target_of(&l.spec);
        if s.missed > 0 {
            notes.push(format!("{target}: {} returns not watched: --maxactive returns were already pending", s.missed));
        }
        if s.abandoned > 0 {
            notes.push(format!(
                "{target}: {} returns not seen: longjmp, an exception, their thread exited, or the process \
                 executed another program first",
                s.abandoned
            ));
        }
        if let Some(why) = &s.failed {
            notes.push(format!("{target}: not placed: {why}"));
        } else if s.addr.is_none() {
            notes.push(format!("{target}: its library was never loaded"));
        }
    }
    for n in notes.iter().chain(extra_notes) {
        let _ = writeln!(out, "  {n}");
    }
    let _ = writeln!(out, "dprobe: {ending}");
    out
}

fn target_of(spec: &str) -> &str {
    spec.split_whitespace().next().unwrap_or(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_and_their_reasons_are_listed() {
        let lines = [
            ProbeLine {
                spec: "libc:openat path=+0($arg2):string".into(),
                stats: ProbeStats { hits: 3, addr: Some(dprobe_arch::Addr(1)), ..ProbeStats::default() },
                shown: 3,
            },
            ProbeLine {
                spec: "recurse%return".into(),
                stats: ProbeStats {
                    hits: 11,
                    returns: 4,
                    missed: 7,
                    abandoned: 0,
                    addr: Some(dprobe_arch::Addr(2)),
                    failed: None,
                },
                shown: 4,
            },
            ProbeLine { spec: "libplugin:f".into(), stats: ProbeStats::default(), shown: 0 },
        ];
        let text = render(&lines, &[], &[], "process 1 exited with status 0 after 5 ms", false);
        assert!(text.contains("\nlibc:openat             3          -        0\n"), "{text}");
        assert!(text.contains("\nrecurse%return         11          4        7\n"), "{text}");
        assert!(text.contains("recurse%return: 7 returns not watched"), "{text}");
        assert!(text.contains("libplugin:f: its library was never loaded"), "{text}");
        assert!(text.ends_with("dprobe: process 1 exited with status 0 after 5 ms\n"));
    }
}
