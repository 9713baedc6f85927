//! The summary printed when a trace ends: per probe, its hits and what was missed and why.

use std::fmt::Write as _;

use dprobe_core::{Placement, Stats};

/// One probe's line.
pub struct ProbeLine {
    /// The spec as written.
    pub spec: String,
    /// The engine's figures.
    pub stats: Stats,
    /// Where it is placed: more than one for a line the compiler duplicated, or a function
    /// with inlined copies.
    pub sites: usize,
    /// Events that passed the filter.
    pub shown: u64,
    /// What the engine says about it beyond its figures.
    pub remarks: Vec<String>,
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
    let shown: Vec<String> = lines.iter().map(shown_name).collect();
    let width = shown.iter().map(String::len).max().unwrap_or(5).max(5);
    let _ = write!(out, "\n{:<width$} {:>10} {:>10} {:>8}", "PROBE", "HITS", "RETURNS", "MISSED");
    if filtered {
        let _ = write!(out, " {:>10}", "MATCHED");
    }
    out.push('\n');
    let mut notes = Vec::new();
    for (l, name) in lines.iter().zip(&shown) {
        let s = &l.stats;
        let returns =
            if s.returns > 0 || target_of(&l.spec).ends_with("%return") { s.returns.to_string() } else { "-".into() };
        let missed = s.missed + s.reentered;
        let _ = write!(out, "{name:<width$} {:>10} {:>10} {:>8}", s.hits, returns, missed);
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
                "{target}: {} returns not seen: longjmp, an exception, their thread exited, a switched \
                 context (swapcontext) or another program executed left the function, or the call had not \
                 returned when tracing ended",
                s.abandoned
            ));
        }
        if s.rearmed > 0 {
            notes.push(format!(
                "{target}: its breakpoint was removed by something else {} time(s) (another tool's uprobe on \
                 it removed, or the program rewrote its code) and put back: hits in between were not seen",
                s.rearmed
            ));
        }
        if s.reentered > 0 {
            notes.push(format!("{target}: {} hits not handled: they came while another probe ran", s.reentered));
        }
        if s.lost > 0 {
            notes.push(format!(
                "{target}: {} hits not received: they came as tracing stopped, or the buffers carrying events \
                 to dprobe were full (the kernel's, or the agent's ring)",
                s.lost
            ));
        }
        match &s.placement {
            Placement::Failed(why) => notes.push(format!("{target}: not placed: {why}")),
            Placement::Waiting => notes.push(format!("{target}: its library was never loaded")),
            Placement::At(_) | Placement::InKernel | Placement::Unloaded => {}
        }
        notes.extend(l.remarks.iter().filter(|r| !said_of_every_probe(lines, r)).map(|r| format!("{target}: {r}")));
    }
    // A remark every probe has (how they were all counted) is said once.
    let mut shared: Vec<&String> =
        lines.first().map(|l| l.remarks.iter().filter(|r| said_of_every_probe(lines, r)).collect()).unwrap_or_default();
    shared.dedup();
    notes.splice(0..0, shared.into_iter().map(|r| format!("every probe: {r}")));
    for n in notes.iter().chain(extra_notes) {
        let _ = writeln!(out, "  {n}");
    }
    let _ = writeln!(out, "dprobe: {ending}");
    out
}

/// Whether `remark` is said of every probe, there is more than one, and it holds no figure
/// (a probe's own figures stay under its name, even when another's are the same).
fn said_of_every_probe(lines: &[ProbeLine], remark: &str) -> bool {
    let figures = remark.chars().any(|c| c.is_ascii_digit());
    !figures && lines.len() > 1 && lines.iter().all(|l| l.remarks.iter().any(|r| r == remark))
}

/// A probe's name in the table: its target, and how many sites it has when more than one.
fn shown_name(l: &ProbeLine) -> String {
    match l.sites {
        0 | 1 => target_of(&l.spec).to_owned(),
        n => format!("{} ({n} sites)", target_of(&l.spec)),
    }
}

fn target_of(spec: &str) -> &str {
    spec.split_whitespace().next().unwrap_or(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_and_their_reasons_are_listed() {
        let at = |a| Placement::At(dprobe_core::Addr(a));
        let lines = [
            ProbeLine {
                spec: "libc:openat path=+0($arg2):string".into(),
                stats: Stats { hits: 3, placement: at(1), ..Stats::default() },
                sites: 1,
                shown: 3,
                remarks: Vec::new(),
            },
            ProbeLine {
                spec: "recurse%return".into(),
                stats: Stats { hits: 11, returns: 4, missed: 7, placement: at(2), ..Stats::default() },
                sites: 1,
                shown: 4,
                remarks: Vec::new(),
            },
            ProbeLine { spec: "libplugin:f".into(), stats: Stats::default(), sites: 1, shown: 0, remarks: Vec::new() },
            ProbeLine {
                spec: "kernel:f".into(),
                stats: Stats { hits: 9, reentered: 1, lost: 2, placement: Placement::InKernel, ..Stats::default() },
                sites: 1,
                shown: 6,
                remarks: vec!["filtered in the kernel".into()],
            },
        ];
        let text = render(&lines, &[], &[], "process 1 exited with status 0 after 5 ms", false);
        assert!(text.contains("\nlibc:openat             3          -        0\n"), "{text}");
        assert!(text.contains("\nrecurse%return         11          4        7\n"), "{text}");
        assert!(text.contains("recurse%return: 7 returns not watched"), "{text}");
        assert!(text.contains("libplugin:f: its library was never loaded"), "{text}");
        assert!(text.contains("\nkernel:f                9          -        1\n"), "{text}");
        assert!(text.contains("kernel:f: 1 hits not handled"), "{text}");
        assert!(text.contains("kernel:f: 2 hits not received"), "{text}");
        assert!(text.contains("kernel:f: filtered in the kernel\n"), "{text}");
        assert!(text.ends_with("dprobe: process 1 exited with status 0 after 5 ms\n"));
    }

    #[test]
    fn a_probe_with_several_sites_says_how_many() {
        let line = |spec: &str, sites| ProbeLine {
            spec: spec.into(),
            stats: Stats { hits: 39, placement: Placement::At(dprobe_core::Addr(1)), ..Stats::default() },
            sites,
            shown: 39,
            remarks: Vec::new(),
        };
        let text = render(&[line("app:scale x=%di", 4), line("app:main", 1)], &[], &[], "done", false);
        assert!(text.contains("\napp:scale (4 sites)         39          -        0\n"), "{text}");
        assert!(text.contains("\napp:main                    39"), "{text}");
    }

    #[test]
    fn a_remark_every_probe_has_is_said_once() {
        let line = |spec: &str, remarks: &[&str]| ProbeLine {
            spec: spec.into(),
            stats: Stats { placement: Placement::InKernel, ..Stats::default() },
            sites: 1,
            shown: 0,
            remarks: remarks.iter().map(|r| r.to_string()).collect(),
        };
        let how = "aggregated in the kernel (BPF)";
        let figures = "filtered: 3 hits did not pass";
        let lines = [line("libc:a", &[how, figures]), line("libc:b", &[how, figures]), line("libc:c", &[how, figures])];
        let text = render(&lines, &[], &[], "done", false);
        assert_eq!(text.matches(how).count(), 1, "{text}");
        assert!(text.contains("\n  every probe: aggregated in the kernel (BPF)\n"), "{text}");
        for probe in ["libc:a", "libc:b", "libc:c"] {
            assert!(text.contains(&format!("\n  {probe}: {figures}\n")), "a probe's figures under its name\n{text}");
        }
        // One probe: its own remark, under its name.
        let text = render(&lines[..1], &[], &[], "done", false);
        assert!(text.contains("\n  libc:a: aggregated in the kernel (BPF)\n"), "{text}");
    }
}
