//! Probes of one shape (kind, arguments, filter) held by one kernel event, told apart by
//! their site number: each probe's records and the kernel's counts are its own, a probe at a
//! place the event holds already gets another, and every exit path removes them all.
mod common;

use std::process::Command;
use std::sync::Mutex;

use common::{fixture, uprobe_events};

use dprobe_kernel::{FieldValue, Session, Tracefs, SITE_FIELD};
use dprobe_spec::parse_probe;

static EXCLUSIVE: Mutex<()> = Mutex::new(());

fn each() -> &'static str {
    fixture("tests/fixtures", "each")
}

/// Define `specs` in one batch, each allowed to share; their indexes.
fn add_shared(s: &mut Session, specs: &[String]) -> Vec<usize> {
    let indexes: Vec<usize> =
        specs.iter().map(|spec| s.add_later(&parse_probe(spec).unwrap(), None).unwrap()).collect();
    for &i in &indexes {
        s.share(i);
    }
    s.flush().unwrap();
    indexes
}

/// Every record until `n` arrived or 5 s passed: (event, `n` field).
fn records(s: &mut Session, n: usize) -> Vec<(usize, Option<FieldValue>)> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.len() < n && std::time::Instant::now() < deadline {
        s.poll(100, &mut |hit| seen.push((hit.event, hit.field("n")))).unwrap();
    }
    s.poll(0, &mut |hit| seen.push((hit.event, hit.field("n")))).unwrap();
    seen
}

#[test]
fn probes_of_one_shape_share_a_kernel_event_and_each_gets_exactly_its_own_hits() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = uprobe_events();
    let mut s = Session::new().unwrap();
    // f0..f4 with one shape; f2 a second time (the kernel holds one probe per place in an
    // event); f3 with another argument list; f5 alone.
    let mut specs: Vec<String> = (0..5).map(|k| format!("{}:f{k} n=$arg1:s64", each())).collect();
    specs.push(format!("{}:f2 n=$arg1:s64", each()));
    specs.push(format!("{}:f3 n=$arg1:u32", each()));
    specs.push(format!("{}:f5 s=+0($arg1):string", each()));
    let events = add_shared(&mut s, &specs);
    let defined = s.events();
    let id = |i: usize| defined[events[i]].format.id;
    assert!((1..5).all(|k| id(k) == id(0)), "f0..f4 share one kernel event");
    let sites: Vec<Option<u32>> = (0..5).map(|k| defined[events[k]].site).collect();
    assert_eq!(sites, vec![Some(0), Some(1), Some(2), Some(3), Some(4)]);
    assert_ne!(id(5), id(0), "a second probe at f2 gets another event");
    assert_ne!(id(6), id(0), "another argument list gets another event");
    assert!(defined[events[0]].format.field(SITE_FIELD).is_some());
    s.start(None).unwrap();
    assert!(Command::new(each()).status().unwrap().success());
    // f_k runs k + 1 times; f2 is seen by two probes; f5 once.
    let seen = records(&mut s, 15 + 3 + 4 + 1);
    for (k, &event) in events.iter().enumerate().take(7) {
        let calls = match k {
            5 => 3,
            6 => 4,
            k => k + 1,
        };
        let values: Vec<&Option<FieldValue>> = seen.iter().filter(|(e, _)| *e == event).map(|(_, v)| v).collect();
        let expected: Vec<Option<FieldValue>> = (0..calls as i64)
            .map(|n| Some(if k == 6 { FieldValue::Unsigned(n as u64) } else { FieldValue::Signed(n) }))
            .collect();
        assert_eq!(values, expected.iter().collect::<Vec<_>>(), "probe {k}: {}", specs[k]);
        assert_eq!(s.events()[event].received, calls as u64);
        assert_eq!(s.kernel_counts(event).unwrap().hits, calls as u64, "the kernel's count of probe {k}");
    }
    assert_eq!(seen.iter().filter(|(e, _)| *e == events[7]).count(), 1, "f5");
    assert_eq!(seen.len(), 15 + 3 + 4 + 1, "no record twice, none unrouted");
    drop(s);
    assert_eq!(uprobe_events(), before, "every probe of every shared event is gone");
}

#[test]
fn events_not_allowed_to_share_keep_their_own() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    let a = s.add_later(&parse_probe(&format!("{}:f0", each())).unwrap(), None).unwrap();
    let b = s.add_later(&parse_probe(&format!("{}:f1", each())).unwrap(), None).unwrap();
    s.share(b);
    s.flush().unwrap();
    assert_eq!(s.events()[a].site, None, "a BPF program may be attached to it: it counts only its own");
    assert_ne!(s.events()[a].format.id, s.events()[b].format.id);
}

#[test]
fn a_shared_event_left_by_a_killed_session_is_removed_whole_by_the_next() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = uprobe_events();
    let tracefs = Tracefs::open().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // Two events of three probes each, as a session killed with `SIGKILL` leaves them: a
    // line per probe, and one removal per event.
    let lines: Vec<String> = (0..6)
        .map(|k| format!("p:dprobe_{dead}_0/p{} {}:0x{:x} {SITE_FIELD}=\\{}:u32", k / 3, each(), k * 16, k % 3))
        .collect();
    tracefs.define_all("uprobe_events", &lines).unwrap();
    assert_eq!(uprobe_events().matches(&format!("dprobe_{dead}_0/")).count(), 6);
    drop(Session::new().unwrap());
    assert_eq!(uprobe_events(), before, "both events, whole");
}
