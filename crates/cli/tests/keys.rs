//! Counts and histograms split by key: four named threads call `work(size)` known numbers of
//! times, and the program prints what it did; dprobe's tables must say exactly that.
mod common;

use std::collections::BTreeMap;

use common::{trace_workers, worker_threads};

/// The rows of the table titled `title`: first column -> last column.
fn table(text: &str, title: &str) -> BTreeMap<String, u64> {
    let start = text.find(&format!("@{title}:\n")).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
    let body = text[start..].lines().skip(2).take_while(|l| !l.trim().is_empty());
    body.map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[0].to_owned(), f[f.len() - 1].parse().unwrap())
    })
    .collect()
}

#[test]
fn count_by_comm_and_by_tid_are_each_threads_calls() {
    let (text, printed) = trace_workers("by-comm", &["--count", "--by", "comm", "work"]);
    let expected: BTreeMap<String, u64> = worker_threads(&printed).into_iter().map(|(n, _, c)| (n, c)).collect();
    assert_eq!(expected.values().copied().collect::<Vec<_>>(), [3, 5, 8, 13], "{printed}");
    assert_eq!(table(&text, "hits of work by comm"), expected, "{text}");
    assert!(
        text.contains("@hits of work by comm:\nCOMM         COUNT\ndelta           13\ncharlie          8\n"),
        "largest first:\n{text}"
    );

    let (text, printed) = trace_workers("by-tid", &["--count", "--by", "tid", "work"]);
    let expected: BTreeMap<String, u64> =
        worker_threads(&printed).into_iter().map(|(_, t, c)| (t.to_string(), c)).collect();
    assert_eq!(table(&text, "hits of work by tid"), expected, "{text}");

    let (text, _) = trace_workers("by-comm-top", &["--count", "--by", "comm", "--top", "2", "work"]);
    let top = table(&text, "hits of work by comm");
    assert_eq!(top.into_iter().collect::<Vec<_>>(), [("charlie".into(), 8), ("delta".into(), 13)], "{text}");
}

#[test]
fn hist_by_comm_matches_the_programs_own_buckets() {
    let (text, printed) = trace_workers(
        "hist-by-comm",
        &["--hist", "size", "--hist", "twice", "--by", "comm", "work size=$arg1 twice=$arg1"],
    );
    for (name, _, calls) in worker_threads(&printed) {
        let mut expected = BTreeMap::new();
        for l in printed.lines().filter_map(|l| l.strip_prefix(&format!("bucket {name} "))) {
            let (label, n) = l.rsplit_once(' ').unwrap();
            expected.insert(label.to_owned(), n.parse::<u64>().unwrap());
        }
        for field in ["size", "twice"] {
            let title = format!("@{field} of work [{name}]:\n");
            let at = text.find(&title).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
            let mut lines = text[at + title.len()..].lines();
            let figures = lines.next().unwrap();
            assert!(
                figures.starts_with(&format!("count {calls}, min {}, ", 7 * (1 + "abcd".find(&name[..1]).unwrap()))),
                "{figures}"
            );
            let got: BTreeMap<String, u64> = lines
                .take_while(|l| l.starts_with('['))
                .map(|l| {
                    let (label, rest) = l.split_once(')').unwrap_or_else(|| l.split_once(']').unwrap());
                    (format!("{label})"), rest.split_whitespace().next().unwrap().parse().unwrap())
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            assert_eq!(got, expected, "{name}:\n{text}");
        }
    }
}

#[test]
fn by_must_name_a_key_and_split_an_aggregate() {
    common::assert_refused(&[
        (
            &["--count", "--by", "cpu", "work", "--", "true"],
            "--by cpu: not comm, pid, tid, stack nor a fetched value's name",
        ),
        (&["--by", "comm", "work", "--", "true"], "--by splits --count, --hist or --latency"),
        (&["--count", "--top", "3", "work", "--", "true"], "--by"),
    ]);
}

#[test]
fn the_agent_engine_splits_by_key_alike() {
    let (text, printed) = trace_workers("agent-by-comm", &["--engine", "agent", "--count", "--by", "comm", "work"]);
    let expected: BTreeMap<String, u64> = worker_threads(&printed).into_iter().map(|(n, _, c)| (n, c)).collect();
    assert_eq!(table(&text, "hits of work by comm"), expected, "{text}");
}
