//! Event times (`-T`, `--time=rel`, JSON's `time_ns` and `wall_time`): every engine stamps
//! events on one monotonic clock, turned into wall-clock time by one offset taken at the
//! start, so the times fall within the trace and never go back on a thread.
mod common;

use std::collections::BTreeMap;

use common::{check_event_times, trace_workers, wall_now_ns, worker_threads};

/// `dprobe trace -o FILE ARGS -- workers` between two wall-clock readings: (before, after,
/// what dprobe wrote, what the program printed).
fn run(name: &str, args: &[&str]) -> (i128, i128, String, String) {
    let before = wall_now_ns();
    let (text, printed) = trace_workers(name, args);
    (before, wall_now_ns(), text, printed)
}

/// The program's threads: tid -> calls.
fn calls(printed: &str) -> BTreeMap<u64, u64> {
    worker_threads(printed).into_iter().map(|(_, tid, calls)| (tid, calls)).collect()
}

fn json_times_within_the_trace(engine: &str) {
    let (before, after, text, printed) =
        run(&format!("times-{engine}"), &["--engine", engine, "--json", "work", "work%return ret=$retval"]);
    let seen = check_event_times(&text, before, after);
    let mut per_thread: BTreeMap<u64, u64> = BTreeMap::new();
    for (tid, kind) in &seen {
        *per_thread.entry(*tid).or_default() += u64::from(kind == "entry");
    }
    assert_eq!(per_thread, calls(&printed), "{text}");
    assert_eq!(seen.len() as u64, 2 * calls(&printed).values().sum::<u64>(), "an entry and a return per call");
}

#[test]
fn ptrace_json_times_are_monotonic_per_thread_and_within_the_trace() {
    json_times_within_the_trace("ptrace");
}

#[test]
fn agent_json_times_are_monotonic_per_thread_and_within_the_trace() {
    json_times_within_the_trace("agent");
}

/// `HH:MM:SS.ffffff` as seconds of the day.
fn seconds_of_day(text: &str) -> f64 {
    let f: Vec<&str> = text.split(':').collect();
    assert_eq!(f.len(), 3, "{text}");
    assert!(f[0].len() == 2 && f[1].len() == 2 && f[2].len() == 9 && f[2].as_bytes()[2] == b'.', "{text}");
    f[0].parse::<f64>().unwrap() * 3600.0 + f[1].parse::<f64>().unwrap() * 60.0 + f[2].parse::<f64>().unwrap()
}

/// Wall-clock nanoseconds as local seconds of the day.
fn local_seconds_of_day(ns: i128) -> f64 {
    let t = jiff::Timestamp::from_nanosecond(ns).unwrap();
    let d = jiff::tz::TimeZone::system().to_datetime(t);
    f64::from(d.hour()) * 3600.0
        + f64::from(d.minute()) * 60.0
        + f64::from(d.second())
        + f64::from(d.subsec_nanosecond()) / 1e9
}

#[test]
fn dash_t_prints_local_wall_clock_time_and_rel_the_seconds_since_the_start() {
    let (before, after, text, printed) = run("time-wall", &["-T", "work size=$arg1"]);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" call work(")).collect();
    assert_eq!(lines.len() as u64, calls(&printed).values().sum::<u64>(), "{text}");
    let (from, to) = (local_seconds_of_day(before), local_seconds_of_day(after));
    for l in &lines {
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(rest.starts_with("process '"), "{l}");
        let t = seconds_of_day(time);
        // Truncated to the microsecond; a trace across local midnight is not checked.
        if from <= to {
            assert!(from - 1e-6 <= t && t <= to, "{l}: not within {from}..{to}");
        }
    }

    let (before, after, text, _) = run("time-rel", &["--time=rel", "work size=$arg1"]);
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains(" call work(")) {
        let (time, rest) = l.split_once(' ').unwrap();
        let t: f64 = time.parse().unwrap_or_else(|_| panic!("{l}"));
        assert!(t >= 0.0 && t * 1e9 <= (after - before) as f64, "{l}: seconds since the start");
        let thread = rest.split(") ").next().unwrap().to_owned();
        let previous = last.insert(thread, t).unwrap_or(0.0);
        assert!(previous <= t, "{l}: time went back on its thread");
    }
    assert_eq!(last.len(), 4, "four threads\n{text}");
}

#[test]
fn time_takes_wall_or_rel_only() {
    common::assert_refused(&[(&["--time=utc", "work", "--", "true"], "invalid value 'utc'")]);
}
