//! Source-line probes and inlined copies through `dprobe trace` and `dprobe list --lines`,
//! on a program built by gcc and clang at -O0 and -O2 that counts its own calls and lines.
mod common;

use common::{dprobe, hits, line_of, lines_program, out_file};

const BUILDS: [(&str, &str); 4] = [("gcc", "-O0"), ("gcc", "-O2"), ("clang", "-O0"), ("clang", "-O2")];

/// `dprobe trace ARGS -- PROGRAM ROUNDS` with `engine`: (summary, the program's own counts).
fn run(engine: &str, program: &str, specs: &[String], rounds: &str) -> (String, String) {
    let out = out_file(&format!("lines-{}-{engine}", program.rsplit('/').next().unwrap()));
    let mut args = vec!["trace", "--engine", engine, "-c", "-o", out.to_str().unwrap()];
    args.extend(specs.iter().map(String::as_str));
    args.extend(["--", program, rounds]);
    let o = dprobe(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{specs:?}: {stderr}");
    (std::fs::read_to_string(&out).unwrap(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The program's own count `name` (`scale 39`).
fn own(counts: &str, name: &str) -> u64 {
    let line = counts.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {counts}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn line_probes_and_inlined_copies_fire_as_often_as_the_program_counts() {
    for (cc, opt) in BUILDS {
        let p = lines_program(cc, opt);
        let third = format!("{p}:lines.c:{}", line_of("/* THIRD */"));
        let body = format!("{p}:fixtures/lines.c:{}", line_of("/* SCALE_BODY */"));
        let relative = format!("{p}:step:+{}", line_of("/* THIRD */") - line_of("long step(long i)"));
        let scale = format!("{p}:scale");
        let only = format!("{p}:only_inlined");
        for engine in ["ptrace", "agent"] {
            let specs = [third.clone(), body.clone(), relative.clone(), scale.clone(), only.clone()];
            let (summary, counts) = run(engine, p, &specs, "20");
            let (scaled, thirds) = (own(&counts, "scale"), own(&counts, "third"));
            assert_eq!((scaled, thirds), (39, 7), "{counts}");
            let why = format!("{cc} {opt} {engine}:\n{summary}");
            assert_eq!(hits(&summary, &third), thirds, "{why}");
            assert_eq!(hits(&summary, &relative), thirds, "{why}");
            // scale's body: out of line and in its three inlined copies.
            assert_eq!(hits(&summary, &body), scaled, "{why}");
            assert!(summary.contains(&format!("{body} (4 sites)")), "{why}");
            assert_eq!(hits(&summary, &scale), scaled, "{why}");
            assert!(summary.contains(&format!("{scale} (4 sites)")), "{why}");
            // only_inlined: in site_a (20 calls) and site_c (every fifth round: 4).
            assert_eq!(hits(&summary, &only), 24, "{why}");
            assert!(summary.contains(&format!("{only} (2 sites)")), "{why}");
        }
    }
}

#[test]
fn a_return_probe_reaches_the_out_of_line_copy_and_says_so() {
    for (cc, opt) in BUILDS {
        let p = lines_program(cc, opt);
        let out = out_file(&format!("lines-return-{cc}{opt}"));
        let spec = format!("{p}:scale%return");
        let o = dprobe(&["trace", "-c", "-o", out.to_str().unwrap(), &spec, "--", p, "20"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("the 3 inlined copies of `scale` are not return-probed"), "{stderr}");
        let summary = std::fs::read_to_string(&out).unwrap();
        // Through the pointer, every fourth round: 5 calls of the out-of-line copy.
        assert_eq!(hits(&summary, &spec), 5, "{cc} {opt}:\n{summary}");
    }
}

#[test]
fn bad_lines_and_inlined_returns_are_refused_with_the_reason() {
    let p = lines_program("gcc", "-O2");
    let step = line_of("long step(long i)");
    let code = line_of("long v = i * 2");
    let blank = code + 1;
    let cases: Vec<(String, String)> = vec![
        (
            format!("{p}:lines.c:{blank}"),
            format!("lines.c:{blank} has no code; the nearest lines with code are {code} (above) and {} (below)", code + 3),
        ),
        (
            format!("{p}:step:+{}", blank - step),
            format!(
                "step:+{} (lines.c:{blank}) has no code; the nearest lines with code are step:+{} (above) and step:+{} (below)",
                blank - step,
                code - step,
                code + 3 - step
            ),
        ),
        (format!("{p}:step:+40"), "`step:+40` is past the end of `step`".into()),
        (format!("{p}:nothere.c:3"), "no source file `nothere.c` in the debug information (its files include lines.c)".into()),
        (format!("{p}:nofunction:+1"), "no function `nofunction` in the debug information".into()),
        (
            format!("{p}:only_inlined%return"),
            "`only_inlined` has no out-of-line copy to be return-probed: every call of it was inlined (2 copies)".into(),
        ),
        (format!("{p}:lines.c:47%return"), "a source line has no return".into()),
        (format!("{p}:lines.c:0"), "`0` is not a line number".into()),
        (format!("{}:lines.c:3", common::target()), "has no debug information (build it with -g".into()),
        ("./no/such/program:lines.c:3".into(), "`./no/such/program`: no such file".into()),
    ];
    for (spec, expected) in &cases {
        let o = dprobe(&["trace", spec, "--", p, "1"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{spec}: {stderr}");
        assert!(stderr.contains(expected.as_str()), "{spec}: expected {expected:?} in:\n{stderr}");
    }
    // --latency times calls: an inlined copy has none.
    let o = dprobe(&["trace", "--latency", &format!("{p}:only_inlined"), "--", p, "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no out-of-line copy to be timed"), "{stderr}");
}

#[test]
fn list_lines_numbers_the_lines_with_code() {
    for (cc, opt) in BUILDS {
        let p = lines_program(cc, opt);
        let o = dprobe(&["list", p, "--lines", "step"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let first = line_of("long step(long i)");
        assert!(text.starts_with("<step@"), "{text}");
        assert!(text.contains(&format!(":{first}-")), "{text}");
        let third = line_of("/* THIRD */");
        let numbered = format!("{third:>6} {:>4}  \t\tthirds++; /* THIRD */\n", format!("+{}", third - first));
        assert!(text.contains(&numbered), "{cc} {opt}:\n{text}");
        // The blank line and the comment are shown without numbers.
        assert!(text.contains(&format!("\n{}  \t/* No code", " ".repeat(11))), "{cc} {opt}:\n{text}");
        let o = dprobe(&["list", p, "--lines", "scale"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("(out of line, and 3 inlined copies)"), "{text}");
    }
    let o = dprobe(&["list", lines_program("gcc", "-O2"), "--lines", "nothing_here"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no function `nothing_here`"));
}
