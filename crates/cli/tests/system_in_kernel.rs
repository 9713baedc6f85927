//! `dprobe trace -a --count|--hist --by`: the kernel engine aggregating in the kernel (a BPF
//! program per probe, its map read at the end), on this machine's kernel (as root). Four
//! named threads call `work(size)` known numbers of times and print what they did; the
//! kernel's tables must say exactly that, and the same as dprobe's own aggregation of each
//! event (`--no-bpf`).
mod common;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/worker_tables.rs"]
mod worker_tables;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use common::{dprobe_command, out_file, trace_to_file, worker_threads, workers};
use worker_tables::{histogram, printed_buckets, sizes_of, table};

/// One system-wide trace at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `dprobe trace -a -v -o FILE ARGS -- workers`: what dprobe wrote, what the program
/// printed, and dprobe's standard error.
fn run(name: &str, args: &[&str]) -> (String, String, String) {
    let mut all = vec!["-a", "-v"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", workers()]);
    let t = trace_to_file(name, &all);
    assert_eq!(t.code, Some(0), "{}", t.what(name));
    (t.trace, t.stdout, t.stderr)
}

/// `/path/workers:work`.
fn work() -> String {
    format!("{}:work", workers())
}

/// The program's threads: (name, tid as printed, calls).
fn threads(printed: &str) -> Vec<(String, String, u64)> {
    worker_threads(printed).into_iter().map(|(n, t, c)| (n, t.to_string(), c)).collect()
}

/// The tables of a summary: everything before the probes' table.
fn tables(text: &str) -> &str {
    &text[..text.find("\nPROBE ").unwrap_or(text.len())]
}

/// The probe `spec` aggregated in the kernel, as `-v` and the summary say.
fn assert_in_kernel(spec: &str, text: &str, stderr: &str) {
    assert!(stderr.contains(&format!("`{spec}`: its hits are counted in the kernel (BPF)")), "{stderr}");
    assert!(text.contains("aggregated in the kernel (BPF): no per-event records reached dprobe"), "{text}");
}

#[test]
fn count_by_comm_and_by_tid_in_the_kernel_are_each_threads_calls_as_in_dprobe() {
    let _x = exclusive();
    let work = work();
    let (text, printed, stderr) = run("bpf-by-comm", &["--count", "--by", "comm", &work]);
    assert_in_kernel(&work, &text, &stderr);
    let expected: BTreeMap<String, u64> = threads(&printed).into_iter().map(|(n, _, c)| (n, c)).collect();
    assert_eq!(expected.values().copied().collect::<Vec<_>>(), [3, 5, 8, 13], "{printed}");
    let title = format!("hits of {work} by comm");
    assert_eq!(table(&text, &title), expected, "{text}");
    assert_eq!(common::hits(&text, &work), 29, "{text}");

    // The same table from each event, aggregated in dprobe.
    let (perf, _, stderr) = run("perf-by-comm", &["--count", "--by", "comm", "--no-bpf", &work]);
    assert!(stderr.contains("aggregating in dprobe from each event: --no-bpf"), "{stderr}");
    assert!(!perf.contains("aggregated in the kernel"), "{perf}");
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");

    for extra in [&[][..], &["--no-bpf"][..]] {
        let mut args = vec!["--count", "--by", "tid", &work];
        args.extend_from_slice(extra);
        let (text, printed, _) = run("bpf-by-tid", &args);
        let expected: BTreeMap<String, u64> = threads(&printed).into_iter().map(|(_, t, c)| (t, c)).collect();
        assert_eq!(table(&text, &format!("hits of {work} by tid")), expected, "{extra:?}\n{text}");
    }
}

#[test]
fn hist_by_comm_in_the_kernel_matches_the_programs_buckets_and_dprobes_figures() {
    let _x = exclusive();
    let spec = format!("{} size=$arg1", work());
    let (text, printed, stderr) = run("bpf-hist", &["--hist", "size", "--by", "comm", &spec]);
    assert_in_kernel(&spec, &text, &stderr);
    for (name, _, calls) in threads(&printed) {
        let (figures, got) = histogram(&text, &format!("size of {} [{name}]", work()));
        let min = sizes_of(&name, calls).next().unwrap();
        assert!(figures.starts_with(&format!("count {calls}, min {min}, ")), "{figures}");
        assert!(figures.ends_with(&format!(", max {}", sizes_of(&name, calls).last().unwrap())), "{figures}");
        assert_eq!(got, printed_buckets(&printed, &name), "{name}:\n{text}");
    }
    // Percentiles and all: the very tables dprobe makes from each event.
    let (perf, _, _) = run("perf-hist", &["--hist", "size", "--by", "comm", "--no-bpf", &spec]);
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");
}

#[test]
fn comm_restricts_in_the_kernel() {
    let _x = exclusive();
    let (text, printed, stderr) = run("bpf-comm", &["--comm", "charlie", "--count", "--by", "tid", &work()]);
    assert_in_kernel(&work(), &text, &stderr);
    let (_, tid, calls) = threads(&printed).into_iter().find(|(n, _, _)| n == "charlie").unwrap();
    assert_eq!(table(&text, &format!("hits of {} by tid", work())), BTreeMap::from([(tid, calls)]), "{text}");
    assert_eq!(common::hits(&text, &work()), 8, "{text}");
}

/// `workers` started, waiting for a line on its standard input before it runs.
fn gated_workers() -> std::process::Child {
    let script = format!("read go; exec {}", workers());
    Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap()
}

#[test]
fn pid_restricts_in_the_kernel_exactly() {
    let _x = exclusive();
    let (mut traced, mut other) = (gated_workers(), gated_workers());
    let out = out_file("bpf-pid");
    let pid = traced.id().to_string();
    let mut dprobe = dprobe_command()
        .args(["trace", "-a", "-v", "-p", &pid, "-o", out.to_str().unwrap(), "--count", "--by", "tid", &work()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_counted_in_the_kernel(&mut dprobe);
    // Both run now, at the same time; only the first is counted.
    for child in [&mut traced, &mut other] {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let printed = |c: std::process::Child| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
    let (mine, theirs) = (printed(traced), printed(other));
    // SAFETY: a signal to the dprobe this test started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
    assert!(dprobe.wait().unwrap().success());
    let text = std::fs::read_to_string(&out).unwrap();
    let expected: BTreeMap<String, u64> = threads(&mine).into_iter().map(|(_, t, c)| (t, c)).collect();
    assert_eq!(expected.len(), 4, "{mine}");
    assert_eq!(table(&text, &format!("hits of {} by tid", work())), expected, "{text}\nthe other: {theirs}");
    assert_eq!(common::hits(&text, &work()), 29, "{text}");
}

/// The last column of `probe`'s line in the summary's table (MATCHED, with a filter).
fn matched(text: &str, probe: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{probe} "))).unwrap_or_else(|| panic!("{text}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn filter_in_the_kernel_counts_exactly_the_hits_that_pass_as_dprobe_does() {
    let _x = exclusive();
    let spec = format!("{} size=$arg1:s64 c=$comm", work());
    let filter = "size >= 50 && c != \"delta\" || !(size != 7)";
    let (text, printed, stderr) = run("bpf-filter", &["--count", "--by", "comm", "--filter", filter, &spec]);
    assert_in_kernel(&spec, &text, &stderr);
    let mut expected = BTreeMap::new();
    for (name, _, calls) in threads(&printed) {
        let passed = sizes_of(&name, calls).filter(|&s| (s >= 50 && name != "delta") || s == 7).count() as u64;
        if passed > 0 {
            expected.insert(name, passed);
        }
    }
    assert_eq!(expected, BTreeMap::from([("alpha".into(), 1), ("bravo".into(), 2), ("charlie".into(), 6)]));
    assert_eq!(table(&text, &format!("hits of {} by comm", work())), expected, "{text}");
    assert_eq!((common::hits(&text, &work()), matched(&text, &work())), (29, 9), "{text}");
    assert!(text.contains("filtered in the kernel (BPF): 20 hits did not pass"), "{text}");

    // dprobe testing each event says the same.
    let (perf, _, _) = run("perf-filter", &["--count", "--by", "comm", "--no-bpf", "--filter", filter, &spec]);
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");
    assert_eq!((common::hits(&perf, &work()), matched(&perf, &work())), (29, 9), "{perf}");

    // A pattern is matched in dprobe, from each event, as -v says.
    let (text, _, stderr) = run("bpf-filter-glob", &["--count", "--by", "comm", "--filter", "c ~ \"b*\"", &spec]);
    let why = format!("`{spec}`: its hits are counted in dprobe from each event: --filter: the pattern \"b*\"");
    assert!(stderr.contains(&why), "{stderr}");
    assert!(!text.contains("aggregated in the kernel"), "{text}");
    assert_eq!(table(&text, &format!("hits of {} by comm", work())), BTreeMap::from([("bravo".into(), 5)]), "{text}");
}

#[test]
fn count_and_hist_by_a_fetched_value_in_the_kernel_are_the_programs_calls() {
    let _x = exclusive();
    let spec = format!("{} size=$arg1:s64", work());
    let (text, printed, stderr) = run("bpf-by-size", &["--count", "--by", "size", &spec]);
    assert_in_kernel(&spec, &text, &stderr);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (name, _, calls) in threads(&printed) {
        for s in sizes_of(&name, calls) {
            *expected.entry(s.to_string()).or_default() += 1;
        }
    }
    assert_eq!(expected.values().sum::<u64>(), 29);
    assert_eq!(expected.get("28"), Some(&2), "bravo's second and delta's first");
    assert_eq!(table(&text, &format!("hits of {} by size", work())), expected, "{text}");
    let (perf, _, _) = run("perf-by-size", &["--count", "--by", "size", "--no-bpf", &spec]);
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");

    // A histogram split by the thread's name and a value in hex: the same tables both ways.
    let spec = format!("{} size=$arg1:s64 half=$arg1:x32", work());
    let args = ["--hist", "size", "--by", "comm,half", "--filter", "size < 100"];
    let (text, _, stderr) = run("bpf-hist-by-half", &[&args[..], &[&spec]].concat());
    assert_in_kernel(&spec, &text, &stderr);
    assert!(text.contains(&format!("@size of {} [delta, 0x1c]:\ncount 1, min 28, ", work())), "{text}");
    let (perf, _, _) = run("perf-hist-by-half", &[&args[..], &["--no-bpf", &spec]].concat());
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");
}

/// `hits per comm` as prometheus_client's parser reads `dprobe_hits_total` in `text`; `None`
/// where it is not installed.
fn hits_by_comm_parsed(text: &str) -> Option<BTreeMap<String, u64>> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       if s.name == 'dprobe_hits_total': print(s.labels['comm'], int(s.value))\n";
    let printed = prometheus::python_with_prometheus_client(script, text)?;
    Some(printed.lines().map(|l| l.split_once(' ').unwrap()).map(|(c, n)| (c.to_owned(), n.parse().unwrap())).collect())
}

#[test]
fn metrics_come_from_the_kernels_maps_as_from_each_event() {
    let _x = exclusive();
    let spec = format!("{} size=$arg1:s64", work());
    let file = |name: &str| out_file(name).to_str().unwrap().to_owned();
    let (bpf_file, perf_file) = (file("bpf-metrics.prom"), file("perf-metrics.prom"));
    let args = ["--count", "--hist", "size", "--by", "comm", &spec];
    let (text, printed, stderr) = run("bpf-metrics", &[&["--metrics", &bpf_file][..], &args].concat());
    assert_in_kernel(&spec, &text, &stderr);
    let (perf, _, _) = run("perf-metrics", &[&["--metrics", &perf_file, "--no-bpf"][..], &args].concat());
    assert!(!perf.contains("aggregated in the kernel"), "{perf}");
    let (bpf, perf) = (std::fs::read_to_string(&bpf_file).unwrap(), std::fs::read_to_string(&perf_file).unwrap());
    // Counts, buckets and sums: the same file.
    assert_eq!(bpf, perf);
    let expected: BTreeMap<String, u64> = threads(&printed).into_iter().map(|(n, _, c)| (n, c)).collect();
    for (name, calls) in &expected {
        let probe = work();
        let line = format!("dprobe_hits_total{{probe=\"{probe}\",comm=\"{name}\"}} {calls}\n");
        assert!(bpf.contains(&line), "{line} in\n{bpf}");
        let sum: i64 = sizes_of(name, *calls).sum();
        let line = format!("dprobe_value_sum{{probe=\"{probe}\",comm=\"{name}\",field=\"size\"}} {sum}\n");
        assert!(bpf.contains(&line), "{line} in\n{bpf}");
    }
    if let Some(parsed) = hits_by_comm_parsed(&bpf) {
        assert_eq!(parsed, expected);
    }
}

#[test]
fn metrics_interval_rewrites_the_file_from_the_kernels_maps_while_tracing() {
    let _x = exclusive();
    let mut traced = gated_workers();
    let out = out_file("bpf-metrics-interval");
    let metrics = out_file("bpf-metrics-interval.prom");
    let pid = traced.id().to_string();
    let mut dprobe = dprobe_command()
        .args(["trace", "-a", "-v", "-p", &pid, "-o", out.to_str().unwrap(), "--count", "--by", "comm"])
        .args(["--metrics", metrics.to_str().unwrap(), "--interval", "50ms", &work()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_counted_in_the_kernel(&mut dprobe);
    traced.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let printed = String::from_utf8(traced.wait_with_output().unwrap().stdout).unwrap();
    let expected: BTreeMap<String, u64> = threads(&printed).into_iter().map(|(n, _, c)| (n, c)).collect();
    let probe = work();
    let all_counted = |text: &str| {
        expected.iter().all(|(name, calls)| {
            text.contains(&format!("dprobe_hits_total{{probe=\"{probe}\",comm=\"{name}\"}} {calls}\n"))
        })
    };
    // The program is done; dprobe still traces, and its file catches up with the kernel's map.
    let started = std::time::Instant::now();
    let during = loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        if all_counted(&text) {
            break text;
        }
        assert!(started.elapsed().as_secs() < 60, "the file never had every thread's calls:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(dprobe.try_wait().unwrap().is_none(), "written while dprobe still traces");
    assert!(during.ends_with("# EOF\n"), "{during}");
    if let Some(parsed) = hits_by_comm_parsed(&during) {
        assert_eq!(parsed, expected);
    }
    // SAFETY: a signal to the dprobe this test started.
    assert_eq!(unsafe { libc::kill(dprobe.id() as i32, libc::SIGINT) }, 0);
    assert!(dprobe.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), during, "the last rewrite: the same figures");
}

#[test]
fn return_probes_watched_at_their_exits_are_counted_there_in_the_kernel() {
    let _x = exclusive();
    let ret = format!("{}%return", work());
    let (text, printed, stderr) = run("bpf-exits-by-tid", &["--count", "--by", "tid", &ret]);
    let how = "its returns are watched at its 1 exit (ret, tail calls): the stack is not touched; its entries and \
               returns are counted in the kernel (BPF)";
    assert!(stderr.contains(&format!("`{ret}`: {how}")), "{stderr}");
    assert!(text.contains("aggregated in the kernel (BPF): no per-event records reached dprobe"), "{text}");
    let expected: BTreeMap<String, u64> = threads(&printed).into_iter().map(|(_, t, c)| (t, c)).collect();
    assert_eq!(table(&text, &format!("hits of {ret} by tid")), expected, "{text}");
    let line = text.lines().find(|l| l.starts_with(&ret)).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[1..3], ["29", "29"], "entries and returns\n{text}");

    // work returns twice its size: the value read at its `ret`, the tables dprobe makes from
    // each paired return.
    let spec = format!("{ret} r=$retval");
    let (text, printed, _) = run("bpf-exits-hist", &["--hist", "r", "--by", "comm", &spec]);
    for (name, _, calls) in threads(&printed) {
        let title = format!("@r of {ret} [{name}]:\n");
        let at = text.find(&title).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
        let figures = text[at + title.len()..].lines().next().unwrap();
        let min = 2 * 7 * (1 + "abcd".find(&name[..1]).unwrap() as u64);
        assert!(figures.starts_with(&format!("count {calls}, min {min}, ")), "{figures}");
        assert!(figures.ends_with(&format!(", max {}", min * calls)), "{figures}");
    }
    let (perf, _, stderr) = run("perf-exits-hist", &["--hist", "r", "--by", "comm", "--no-bpf", &spec]);
    assert!(stderr.contains("its returns are watched at its 1 exit"), "{stderr}");
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");

    // A filter on the value is tested at the `ret` by the BPF program (sizes 50 and up).
    let args = ["--count", "--by", "comm", "--filter", "r >= 100"];
    let (text, printed, _) = run("bpf-exits-filter", &[&args[..], &[&spec]].concat());
    assert!(text.contains("aggregated in the kernel (BPF)"), "{text}");
    let mut expected = BTreeMap::new();
    for (name, _, calls) in threads(&printed) {
        let passed = sizes_of(&name, calls).filter(|&s| 2 * s >= 100).count() as u64;
        if passed > 0 {
            expected.insert(name, passed);
        }
    }
    assert_eq!(table(&text, &format!("hits of {ret} by comm")), expected, "{text}");
    let (perf, _, _) = run("perf-exits-filter", &[&args[..], &["--no-bpf", &spec]].concat());
    assert!(perf.contains("filtered in the kernel: only the events that passed reached dprobe"), "{perf}");
    assert_eq!(tables(&perf), tables(&text), "{perf}\n{text}");
}

/// Waits until dprobe (run with `-v` and stderr piped) says its probes are live, and checks it
/// counts them in the kernel.
fn until_counted_in_the_kernel(dprobe: &mut std::process::Child) {
    let mut stderr = BufReader::new(dprobe.stderr.take().unwrap());
    let mut said = String::new();
    while !said.ends_with("dprobe: tracing\n") {
        assert!(stderr.read_line(&mut said).unwrap() > 0, "dprobe ended early: {said}");
    }
    assert!(said.contains("its hits are counted in the kernel (BPF)"), "{said}");
}
