//! Aggregation in the kernel on this machine's kernel (as root): the BPF program attached to
//! a session's uprobe counts each value the program passed exactly, and a map too small for
//! the keys says how many hits it could not count.
use std::collections::BTreeMap;
use std::process::Command;

use dprobe_kernel::bpf::filter::{compile, Operand};
use dprobe_kernel::bpf::{lazy_keys_allowed, value_source, Tally, TallyConfig, TallyOn};
use dprobe_kernel::Session;
use dprobe_spec::{parse_filter, parse_probe};

/// Four named threads calling `work(size)` 3, 5, 8 and 13 times with sizes
/// `(i + 1) * 7 * (thread + 1)` (see the fixture).
fn workers() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/fixtures/workers.c");
    dprobe_test_fixtures::c_program(src, "workers", &["-O2", "-pthread"])
}

/// The sizes the fixture passes, each with its number of calls.
fn sizes() -> BTreeMap<i64, u64> {
    let mut all = BTreeMap::new();
    for (thread, calls) in [3i64, 5, 8, 13].into_iter().enumerate() {
        for i in 0..calls {
            *all.entry((i + 1) * 7 * (thread as i64 + 1)).or_default() += 1;
        }
    }
    all
}

/// A row of the program's map: value, count, min, max.
type Row = (i64, u64, i64, i64);

/// Run the fixture once with `config`'s program on `work(size)`: the program's rows (value,
/// count, min, max) and its dropped hits.
fn tally(config: TallyConfig) -> (Vec<Row>, u64) {
    let (rows, dropped, _) = tally_filtered(config);
    (rows, dropped)
}

/// [`tally`], with the hits that did not pass the filter too.
fn tally_filtered(config: TallyConfig) -> (Vec<Row>, u64, u64) {
    let spec = parse_probe(&format!("{}:work size=$arg1:s64", workers())).unwrap();
    let mut session = Session::new().unwrap();
    let event = session.add(&spec, None, None).unwrap();
    let arg = &spec.args[0];
    let value = value_source(&arg.fetch, arg.ty, true, false).unwrap();
    let mut t = Tally::load(&TallyConfig { value: Some(value), ..config }, TallyOn::UserProbe).unwrap();
    t.attach(session.events()[event].format.id).unwrap();
    let status = Command::new(workers()).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let rows = t.rows(0).unwrap().into_iter().map(|r| (r.value.unwrap(), r.count, r.min, r.max)).collect();
    let (dropped, rejected) = (t.dropped(), t.rejected());
    assert_eq!(t.unallocated(), 0, "a hit found no memory for its key");
    drop(t);
    session.close().unwrap();
    (rows, dropped, rejected)
}

#[test]
fn the_map_of_keys_is_allocated_as_keys_arrive_where_the_kernel_allows_it() {
    let _x = one_at_a_time();
    let config = TallyConfig { own_pid: std::process::id(), max_keys: 1024, ..TallyConfig::default() };
    let t = Tally::load(&config, TallyOn::UserProbe).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let lazy = lazy_keys_allowed(release.trim());
    eprintln!("kernel {}: map allocated as keys arrive: {lazy}", release.trim());
    assert_eq!(t.allocated_up_front(), Ok(!lazy));
}

#[test]
fn each_value_is_counted_exactly_and_a_full_map_counts_what_it_drops() {
    let _x = one_at_a_time();
    let expected = sizes();
    let config = TallyConfig { own_pid: std::process::id(), max_keys: 1024, ..TallyConfig::default() };
    let (rows, dropped) = tally(config.clone());
    assert_eq!(dropped, 0);
    let got: BTreeMap<i64, u64> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, expected, "every size below 2048 is its own key");
    assert!(rows.iter().all(|&(v, _, min, max)| v == min && v == max), "{rows:?}");

    // Four keys' room: the first four sizes seen are counted whole, the others dropped.
    let (rows, dropped) = tally(TallyConfig { max_keys: 4, ..config });
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (v, n, _, _) in &rows {
        assert_eq!(Some(n), expected.get(v), "size {v}");
    }
    let counted: u64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(counted + dropped, expected.values().sum::<u64>(), "every hit counted or dropped");
    assert!(dropped > 0);
}

#[test]
fn a_filter_counts_what_passes_and_says_how_many_did_not() {
    let _x = one_at_a_time();
    let text = "size > 100 && size != 140 || !(size >= 8)";
    let filter = parse_filter(text, &["size"]).unwrap();
    let arg = parse_probe("f size=$arg1:s64").unwrap().args.remove(0);
    let value = value_source(&arg.fetch, arg.ty, true, false).unwrap();
    let tests = compile(&filter, &mut |_| Ok(Some(Operand::Number(value.clone())))).unwrap();
    let config = TallyConfig { own_pid: std::process::id(), max_keys: 1024, filter: tests, ..TallyConfig::default() };
    let (rows, dropped, rejected) = tally_filtered(config);
    let expected: BTreeMap<i64, u64> = sizes().into_iter().filter(|&(s, _)| (s > 100 && s != 140) || s < 8).collect();
    let got: BTreeMap<i64, u64> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, expected);
    assert_eq!((dropped, rejected), (0, 29 - expected.values().sum::<u64>()));
    assert_eq!(expected.values().sum::<u64>(), 1 + 4 + 9, "7; charlie's 105..168; delta's 112..364 but 140");
}

/// Tests in this file run one at a time (they share the fixture's probe).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
