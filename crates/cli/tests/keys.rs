//! Counts and histograms split by key: four named threads call `work(size)` known numbers of
//! times, and the program prints what it did; dprobe's tables must say exactly that.
mod common;
#[path = "common/worker_tables.rs"]
mod worker_tables;

use std::collections::BTreeMap;

use common::{trace_workers, worker_threads};
use worker_tables::{histogram, printed_buckets, sizes_of, table};

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
        let expected = printed_buckets(&printed, &name);
        let min = sizes_of(&name, calls).next().unwrap();
        for field in ["size", "twice"] {
            let (figures, got) = histogram(&text, &format!("{field} of work [{name}]"));
            assert!(figures.starts_with(&format!("count {calls}, min {min}, ")), "{figures}");
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
