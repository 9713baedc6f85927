//! The kernel engine on this machine's kernel (as root): system-wide uprobes on a program
//! started after the probe was placed, tracepoints, and the kernel's event files left as they
//! were on every exit path.
mod common;

use std::process::Command;
use std::sync::Mutex;

use common::{fixture, uprobe_events};

use dprobe_kernel::{FieldValue, Session, Tracefs};
use dprobe_spec::parse_probe;

/// Tests that compare `uprobe_events` before and after must not overlap with other sessions:
/// every test takes this lock.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

fn greet() -> &'static str {
    fixture("tests/fixtures", "greet")
}

/// Poll until `done` says so or 5 s pass.
fn poll_until(s: &mut Session, mut each: impl FnMut(dprobe_kernel::Hit<'_>), done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        s.poll(100, &mut each).unwrap();
    }
    s.poll(0, &mut each).unwrap();
}

#[test]
fn a_system_wide_uprobe_sees_a_process_started_after_it_with_exact_counts_and_strings() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = uprobe_events();
    let mut s = Session::new().unwrap();
    let entry = parse_probe(&format!("{}:greet name=+0($arg1):string i=$arg2:s64 c=$comm", greet())).unwrap();
    let ret = parse_probe(&format!("{}:greet%return ret=$retval:s32", greet())).unwrap();
    s.add(&entry, None, None).unwrap();
    s.add(&ret, Some("ret < 0"), None).unwrap();
    assert!(uprobe_events().contains(s.group()), "defined in the session's own group");
    s.start(None).unwrap();
    let child = Command::new(greet()).args(["dprobe-test", "50"]).status().unwrap();
    assert!(child.success());
    let mut entries = Vec::new();
    let mut negative = 0;
    let pid = std::cell::Cell::new(0u32);
    let count = std::cell::Cell::new(0usize);
    poll_until(
        &mut s,
        |hit| {
            count.set(count.get() + 1);
            if hit.event == 0 {
                pid.set(hit.pid);
                entries.push((hit.field("name"), hit.field("i"), hit.field("c")));
            } else {
                assert!(
                    matches!(hit.field("ret"), Some(FieldValue::Signed(r)) if r < 0),
                    "the filter ran in the kernel"
                );
                negative += 1;
            }
        },
        || count.get() >= 50 + 150 / 7,
    );
    assert_eq!(entries.len(), 50, "every call, exactly");
    for (i, (name, n, comm)) in entries.iter().enumerate() {
        assert_eq!(name, &Some(FieldValue::Str(b"dprobe-test".to_vec())));
        assert_eq!(n, &Some(FieldValue::Signed(i as i64)));
        assert_eq!(comm, &Some(FieldValue::Str(b"greet".to_vec())));
    }
    // greet returns i % 7 - 3: negative for i % 7 in 0..3.
    let expected = (0..50).filter(|i| i % 7 < 3).count();
    assert_eq!(negative, expected);
    assert_eq!(s.events()[0].received, 50);
    let counts = s.kernel_counts(0).unwrap();
    assert_eq!(counts.hits, 50, "uprobe_profile agrees");
    assert_eq!(s.lost, 0);
    drop(s);
    assert_eq!(uprobe_events(), before, "the session's events are gone");
}

#[test]
fn tracepoint_events_decode() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    s.add(&parse_probe("tracepoint:sched:sched_process_exec").unwrap(), None, None).unwrap();
    s.start(None).unwrap();
    let child = Command::new(greet()).args(["x", "1"]).spawn().unwrap();
    let child_pid = child.id();
    let mut child = child;
    child.wait().unwrap();
    let seen = std::cell::RefCell::new(Vec::new());
    poll_until(
        &mut s,
        |hit| {
            if hit.pid == child_pid {
                seen.borrow_mut().push((hit.field("filename"), hit.field("pid")));
            }
        },
        || !seen.borrow().is_empty(),
    );
    let seen = seen.into_inner();
    assert_eq!(
        seen,
        vec![(Some(FieldValue::Str(greet().as_bytes().to_vec())), Some(FieldValue::Signed(child_pid as i64)))]
    );
}

#[test]
fn every_exit_path_leaves_the_event_files_as_they_were() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = uprobe_events();
    let spec = parse_probe(&format!("{}:greet", greet())).unwrap();
    // Drop while recording.
    let mut s = Session::new().unwrap();
    s.add(&spec, None, None).unwrap();
    s.start(None).unwrap();
    drop(s);
    assert_eq!(uprobe_events(), before);
    // A panic while recording.
    let r = std::panic::catch_unwind(|| {
        let mut s = Session::new().unwrap();
        s.add(&spec, None, None).unwrap();
        s.start(None).unwrap();
        panic!("in the middle of a session");
    });
    assert!(r.is_err());
    assert_eq!(uprobe_events(), before);
    // A refused definition leaves nothing half-made.
    let mut s = Session::new().unwrap();
    s.add(&spec, None, None).unwrap();
    let bad = parse_probe(&format!("{}:greet x=+0(%zz9):u8", greet()));
    assert!(bad.is_err(), "the spec parser refuses it first");
    drop(s);
    assert_eq!(uprobe_events(), before);
    // A session killed without cleaning up: the next one removes its events.
    let tracefs = Tracefs::open().unwrap();
    let dead = dead_pid();
    let line = format!("p:dprobe_{dead}_0/p0 {}:0x0", greet());
    tracefs.define("uprobe_events", &line).unwrap();
    assert!(uprobe_events().contains(&format!("dprobe_{dead}_0")));
    drop(Session::new().unwrap());
    assert_eq!(uprobe_events(), before, "a dead session's group is removed at start");
}

/// A process id that is not in use.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_filter_the_kernel_refuses_is_an_error_with_its_reason() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    s.add(&parse_probe(&format!("{}:greet i=$arg2:s64", greet())).unwrap(), Some("nosuchfield == 1"), None).unwrap();
    let e = s.start(None).unwrap_err().to_string();
    assert!(e.contains("filter `nosuchfield == 1`"), "{e}");
}

#[test]
fn a_slow_consumer_loses_records_and_counts_every_one() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    s.add(&parse_probe(&format!("{}:greet name=+0($arg1):string", greet())).unwrap(), None, None).unwrap();
    s.start(None).unwrap();
    // 100,000 records while nobody reads: far more than the buffers hold. The kernel reports
    // what a CPU's buffer dropped before the next record it writes there: one more call on
    // the same CPU brings the report.
    let on_cpu0 = |n: &str| Command::new("taskset").args(["-c", "0", greet(), "slow-consumer", n]).status().unwrap();
    assert!(on_cpu0("100000").success());
    let received = std::cell::Cell::new(0u64);
    s.poll(0, &mut |_| received.set(received.get() + 1)).unwrap();
    assert!(on_cpu0("1").success());
    poll_until(&mut s, |_| received.set(received.get() + 1), || false); // its full time
    let (received, lost) = (received.get(), s.lost);
    assert!(lost > 0 && received < 100_001, "the buffers overflowed: {received} received, {lost} lost");
    assert_eq!(received + lost, 100_001, "every record is either read or counted as lost");
    assert_eq!(s.kernel_counts(0).unwrap().hits, 100_001);
}

#[test]
fn strings_the_kernel_cuts_or_cannot_read_are_told_apart() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/strings.c");
    let prog = dprobe_test_fixtures::c_program(src, "strings", &["-O2"]);
    let mut s = Session::new().unwrap();
    // The thread's name before and after the string: the one after keeps its value when the
    // string is too long (strings read from memory are kept after every other field).
    let spec = format!("{prog}:show c=$comm s=+0($arg1):string i=$arg2:s64 after=$comm");
    s.add(&parse_probe(&spec).unwrap(), None, None).unwrap();
    s.start(None).unwrap();
    // show("", 0), show(NULL, 1), show(10 MB of 'A', 2), show("short", 3).
    assert!(Command::new(prog).arg("10000000").status().unwrap().success());
    let seen = std::cell::RefCell::new(Vec::new());
    poll_until(
        &mut s,
        |hit| seen.borrow_mut().push((hit.field("i"), hit.field("c"), hit.field("s"), hit.field("after"))),
        || seen.borrow().len() >= 4,
    );
    let seen = seen.into_inner();
    let name = || Some(FieldValue::Str(b"strings".to_vec()));
    let ints: Vec<_> = seen.iter().map(|v| v.0.clone()).collect();
    assert_eq!(ints, (0..4).map(|i| Some(FieldValue::Signed(i))).collect::<Vec<_>>());
    assert!(seen.iter().all(|v| v.1 == name()), "the name first always fits: {seen:?}");
    assert_eq!(seen[0].2, Some(FieldValue::Str(Vec::new())), "empty");
    assert_eq!(seen[1].2, Some(FieldValue::Fault), "NULL");
    match &seen[2].2 {
        Some(FieldValue::Truncated(a)) => assert!(a.iter().all(|&c| c == b'A'), "{a:?}"),
        other => panic!("10 MB: {other:?}"),
    }
    assert_eq!(seen[3].2, Some(FieldValue::Str(b"short".to_vec())));
    let afters: Vec<_> = seen.iter().map(|v| v.3.clone()).collect();
    assert_eq!(afters, vec![name(); 4], "the name after the strings, whole");
}

#[test]
fn two_sessions_at_once_each_count_their_own_hits() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let spec = parse_probe(&format!("{}:greet", greet())).unwrap();
    let mut first = Session::new().unwrap();
    first.add(&spec, None, None).unwrap();
    first.start(None).unwrap();
    assert!(Command::new(greet()).args(["a", "70"]).status().unwrap().success());
    let mut second = Session::new().unwrap();
    second.add(&spec, None, None).unwrap();
    second.start(None).unwrap();
    assert!(Command::new(greet()).args(["b", "20"]).status().unwrap().success());
    assert_eq!(first.kernel_counts(0).unwrap().hits, 90);
    assert_eq!(second.kernel_counts(0).unwrap().hits, 20);
    let received = |s: &mut Session, n: u64| {
        let count = std::cell::Cell::new(0u64);
        poll_until(s, |_| count.set(count.get() + 1), || count.get() >= n);
        count.get()
    };
    assert_eq!((received(&mut first, 90), received(&mut second, 20)), (90, 20));
}

#[test]
fn dprobe_own_calls_are_left_out_of_system_wide_probes() {
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    s.add(&parse_probe("libc:getpid").unwrap(), None, None).unwrap();
    s.start(None).unwrap();
    for _ in 0..1000 {
        // SAFETY: getpid has no preconditions.
        std::hint::black_box(unsafe { libc::getpid() });
    }
    let own = std::process::id();
    let mut from_self = 0;
    s.poll(0, &mut |hit| from_self += u32::from(hit.pid == own)).unwrap();
    assert!(s.kernel_counts(0).unwrap().hits >= 1000, "the probe was hit in this process");
    assert_eq!(from_self, 0, "but its events were filtered out in the kernel");
}

fn hop() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hop.c");
    dprobe_test_fixtures::c_program(src, "hop", &["-O2"])
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The records of a thread that moves from CPU to CPU, read from every CPU's buffer while it
/// runs and after it ended, come in the order it made them.
#[test]
fn a_thread_moving_between_cpus_is_seen_in_the_order_it_ran() {
    if online_cpus() < 2 {
        eprintln!("skipped: one CPU, one buffer, nothing to merge");
        return;
    }
    let _x = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Session::new().unwrap();
    s.add(&parse_probe(&format!("{}:step i=$arg1:s64", hop())).unwrap(), None, None).unwrap();
    s.start(None).unwrap();
    const CALLS: i64 = 5_000;
    let mut child = Command::new(hop()).arg(CALLS.to_string()).spawn().unwrap();
    let mut seen = Vec::new();
    let mut cpus = std::collections::BTreeSet::new();
    let mut times = Vec::new();
    let mut each = |hit: dprobe_kernel::Hit<'_>| {
        let Some(FieldValue::Signed(i)) = hit.field("i") else { panic!("no argument") };
        seen.push(i);
        cpus.insert(hit.cpu);
        times.push(hit.time);
    };
    // Read while it runs, every millisecond, so that reads fall between its records (a busy
    // reader would hold the CPU the program waits for).
    while child.try_wait().unwrap().is_none() {
        s.poll(1, &mut each).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.events()[0].received < CALLS as u64 && std::time::Instant::now() < deadline {
        s.poll(100, &mut each).unwrap();
    }
    assert_eq!(s.lost, 0);
    assert!(cpus.len() >= 2, "the records came from {cpus:?}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "delivered in time order");
    let out_of_order = seen.windows(2).filter(|w| w[0] + 1 != w[1]).count();
    assert_eq!(out_of_order, 0, "every call once, in the order made: {:?}", &seen[..seen.len().min(20)]);
    assert_eq!(seen, (0..CALLS).collect::<Vec<_>>());
}
