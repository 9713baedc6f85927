//! `--metrics FILE`: OpenMetrics text with the exact figures of a known program (four named
//! threads calling `work(size)` 3, 5, 8 and 13 times), read back by the `prometheus_client`
//! Python package's parser where it is installed.
mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::process::Command;

use common::{out_file, trace_workers};
use prometheus::python_with_prometheus_client;

/// `dprobe trace --metrics FILE ARGS -- workers`: (the metrics file, what the program printed).
fn run(name: &str, args: &[&str]) -> (String, String) {
    let metrics = out_file(name);
    let mut all = vec!["--metrics", metrics.to_str().unwrap()];
    all.extend_from_slice(args);
    let (_, printed) = trace_workers(&format!("{name}.out"), &all);
    (std::fs::read_to_string(&metrics).unwrap(), printed)
}

/// The program's threads: name -> (calls, its log2 buckets `[LO, HI)` -> count).
fn threads(printed: &str) -> BTreeMap<String, (u64, BTreeMap<u64, u64>)> {
    let mut all: BTreeMap<String, (u64, BTreeMap<u64, u64>)> = BTreeMap::new();
    for l in printed.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["thread", name, _, calls] => all.entry((*name).into()).or_default().0 = calls.parse().unwrap(),
            ["bucket", name, lo, _, n] => {
                let lo: u64 = lo.trim_matches(|c| c == '[' || c == ',').parse().unwrap();
                all.entry((*name).into()).or_default().1.insert(lo, n.parse().unwrap());
            }
            _ => {}
        }
    }
    all
}

/// `name{labels} value` lines: (name, labels) -> value.
fn samples(text: &str) -> BTreeMap<(String, String), String> {
    let rows = text.lines().filter(|l| !l.starts_with('#'));
    rows.map(|l| {
        let (series, value) = l.rsplit_once(' ').unwrap();
        let (name, labels) = series.split_once('{').unwrap();
        ((name.to_owned(), labels.trim_end_matches('}').to_owned()), value.to_owned())
    })
    .collect()
}

#[test]
fn counts_and_histograms_by_comm_are_the_programs_own_figures() {
    let (text, printed) = run("by-comm.prom", &["--count", "--hist", "size", "--by", "comm", "work size=$arg1:s64"]);
    assert!(text.starts_with("# TYPE dprobe_hits counter\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    for (name, (calls, buckets)) in threads(&printed) {
        let labels = format!("probe=\"work\",comm=\"{name}\"");
        assert_eq!(s[&("dprobe_hits_total".into(), labels.clone())], calls.to_string(), "{text}");
        let labels = format!("{labels},field=\"size\"");
        assert_eq!(s[&("dprobe_value_count".into(), labels.clone())], calls.to_string());
        // The sum of (i + 1) * factor * 7 over the thread's calls.
        let factor = 1 + "abcd".find(&name[..1]).unwrap() as u64;
        assert_eq!(s[&("dprobe_value_sum".into(), labels.clone())], (7 * factor * calls * (calls + 1) / 2).to_string());
        // Each cumulative bucket `le 2^(k+1)-1` holds the values below 2^(k+1).
        let mut cumulative = 0;
        for (lo, n) in &buckets {
            cumulative += n;
            let le = format!("{labels},le=\"{}\"", 2 * lo - 1);
            assert_eq!(s[&("dprobe_value_bucket".into(), le)], cumulative.to_string(), "{name} below {}", 2 * lo);
        }
        assert_eq!(s[&("dprobe_value_bucket".into(), format!("{labels},le=\"+Inf\""))], calls.to_string());
    }
    parsed_by_prometheus_client(&text, &threads(&printed));
}

/// The `prometheus_client` package's OpenMetrics parser reads each thread's count.
fn parsed_by_prometheus_client(text: &str, threads: &BTreeMap<String, (u64, BTreeMap<u64, u64>)>) {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       if s.name == 'dprobe_hits_total': print(f.type, s.labels['comm'], int(s.value))\n";
    if let Some(printed) = python_with_prometheus_client(script, text) {
        let want: String = threads.iter().map(|(name, (calls, _))| format!("counter {name} {calls}\n")).collect();
        assert_eq!(printed, want);
    }
}

#[test]
fn latency_is_a_histogram_in_nanoseconds_with_one_count_per_call() {
    let (text, printed) = run("latency.prom", &["--latency", "work"]);
    let s = samples(&text);
    let calls: u64 = threads(&printed).values().map(|(c, _)| c).sum();
    assert_eq!(s[&("dprobe_hits_total".into(), "probe=\"work\"".into())], calls.to_string(), "{text}");
    assert_eq!(s[&("dprobe_latency_nanoseconds_count".into(), "probe=\"work\"".into())], calls.to_string());
    assert!(text.contains("# UNIT dprobe_latency_nanoseconds nanoseconds\n"), "{text}");
    parsed_by_prometheus_client_only(&text);
}

/// The `prometheus_client` package's OpenMetrics parser reads the families' names.
fn parsed_by_prometheus_client_only(text: &str) {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        print(sorted(f.name for f in text_string_to_metric_families(sys.stdin.read())))\n";
    if let Some(printed) = python_with_prometheus_client(script, text) {
        assert_eq!(printed, "['dprobe_hits', 'dprobe_latency_nanoseconds']\n");
    }
}

#[test]
fn interval_rewrites_the_file_whole_while_tracing() {
    use std::io::Write as _;
    let dir = out_file("interval");
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("cat.prom");
    let out = out_file("interval.out");
    // `cat` runs until the test closes its input: the file must be written while it does.
    let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-o", out.to_str().unwrap(), "--metrics", metrics.to_str().unwrap()])
        .args(["--interval", "50ms", "libc:read", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = dprobe.stdin.take().unwrap();
    input.write_all(b"one\n").unwrap();
    let started = std::time::Instant::now();
    let first = loop {
        if let Ok(text) = std::fs::read_to_string(&metrics) {
            break text;
        }
        assert!(started.elapsed().as_secs() < 60, "no metrics file while tracing");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(dprobe.try_wait().unwrap().is_none(), "written while dprobe still traces");
    assert!(first.starts_with("# TYPE dprobe_hits counter\n") && first.ends_with("# EOF\n"), "{first}");
    // Every read sees a whole file, never one being written.
    for _ in 0..50 {
        let text = std::fs::read_to_string(&metrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
    drop(input);
    let o = dprobe.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let last = std::fs::read_to_string(&metrics).unwrap();
    // cat read its line, then the end of its input: at least two reads at the end.
    let hits: u64 = samples(&last)[&("dprobe_hits_total".into(), "probe=\"libc:read\"".into())].parse().unwrap();
    assert!(hits >= 2, "{last}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("cat.prom")], "no temporary file left behind");
}

/// A collector watching the directory never finds the file empty or half written: the file
/// appears by a rename of a whole one, from the first time it is written, and is never opened
/// for writing where it stands (inotify sees every event on it in the directory).
#[test]
fn the_file_only_ever_appears_whole() {
    let dir = out_file("appears-whole");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("m.prom");
    let watched = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: plain system calls on a descriptor this test owns and a NUL-ended path.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    let events = libc::IN_CREATE | libc::IN_OPEN | libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO;
    // SAFETY: as above.
    assert!(unsafe { libc::inotify_add_watch(fd, watched.as_ptr(), events) } >= 0);
    let out = out_file("appears-whole.out");
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-o", out.to_str().unwrap(), "--metrics", metrics.to_str().unwrap()])
        .args(["--interval", "10ms", "libc:getpid", "--", "sleep", "0.2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mut on_the_file = Vec::new();
    let mut buffer = [0u8; 1 << 16];
    loop {
        // SAFETY: the buffer is this test's own, of the length given.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0;
        while at < n as usize {
            // `struct inotify_event`: wd, mask, cookie, len (4 bytes each), then the name.
            let word = |i: usize| u32::from_ne_bytes(buffer[at + i..at + i + 4].try_into().unwrap());
            let (mask, len) = (word(4), word(12) as usize);
            let name = String::from_utf8_lossy(&buffer[at + 16..at + 16 + len]).trim_end_matches('\0').to_owned();
            if name == "m.prom" {
                on_the_file.push(mask);
            }
            at += 16 + len;
        }
    }
    // SAFETY: the descriptor is this test's own, closed once.
    unsafe { libc::close(fd) };
    assert!(on_the_file.len() >= 2, "written at the start, every 10 ms and at the end: {on_the_file:x?}");
    assert!(on_the_file.iter().all(|&m| m == libc::IN_MOVED_TO), "only renamed into place: {on_the_file:x?}");
    assert!(std::fs::read_to_string(&metrics).unwrap().ends_with("# EOF\n"));
}

/// A directory named as the file is refused before the program runs.
#[test]
fn a_directory_is_refused_as_the_metrics_file() {
    let dir = out_file("metrics-is-a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--metrics", dir.to_str().unwrap(), "libc:getpid", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("--metrics: cannot write {}", dir.display())) && err.contains("directory"), "{err}");
}
