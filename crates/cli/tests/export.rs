//! Exports: a Perfetto trace decoded back with Perfetto's schema (the vendored `.proto`,
//! through the prost structs the build generates from it), Chrome's trace-event
//! JSON read by Python's `json`, and OpenMetrics read by `prometheus_client`'s parser. Each
//! must say exactly what the program did: four named threads calling `work(size)` 3, 5, 8
//! and 13 times.
mod common;

#[path = "../src/export/perfetto_proto.rs"]
mod perfetto_proto;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use common::{out_file, trace_workers, worker_threads};
use perfetto_proto::debug_annotation::{NameField as ArgName, Value};
use perfetto_proto::trace_packet::Data;
use perfetto_proto::track_descriptor::StaticOrDynamicName;
use perfetto_proto::track_event::{CallstackField, CounterValueField, NameField, Type as TrackEventType};
use perfetto_proto::{Trace, TrackEvent};
use prost::Message;

/// The program's threads: tid -> (name, calls).
fn threads(printed: &str) -> BTreeMap<i64, (String, u64)> {
    worker_threads(printed).into_iter().map(|(name, tid, calls)| (tid as i64, (name, calls))).collect()
}

/// The sizes thread number `n` (alpha = 0) passes: (i + 1) * (n + 1) * 7.
fn sizes(n: usize, calls: u64) -> Vec<i64> {
    (0..calls as i64).map(|i| (i + 1) * (n as i64 + 1) * 7).collect()
}

/// An event's name (its `name_field` oneof).
fn name_of(e: &TrackEvent) -> Option<&str> {
    e.name_field.as_ref().map(|NameField::Name(n)| n.as_str())
}

const ENTRY: &str = "work size=$arg1:s64";
const RETURN: &str = "work%return ret=$retval:s64";

#[test]
fn perfetto_trace_has_a_slice_per_call_on_each_threads_track_with_arguments_and_return_values() {
    let file = out_file("workers.pftrace");
    let (text, printed) = trace_workers("pftrace", &["--count", "--trace-file", file.to_str().unwrap(), ENTRY, RETURN]);
    let bytes = std::fs::read(&file).unwrap();
    let trace = Trace::decode(bytes.as_slice()).expect("a Trace per Perfetto's schema");
    let expected = threads(&printed);

    // Tracks: the process, each thread under it with its name.
    let mut thread_of_track: HashMap<u64, i64> = HashMap::new();
    let mut process_track = None;
    let mut counter_tracks = Vec::new();
    for p in &trace.packet {
        let Some(Data::TrackDescriptor(d)) = &p.data else { continue };
        if let Some(proc) = &d.process {
            assert_eq!(proc.process_name.as_deref(), Some("workers"));
            process_track = d.uuid;
        }
        if let Some(t) = &d.thread {
            let tid = t.tid.unwrap();
            assert_eq!(t.thread_name.as_deref(), Some(expected[&tid].0.as_str()), "thread {tid}'s name");
            assert_eq!(d.parent_uuid, process_track, "thread {tid} under its process");
            thread_of_track.insert(d.uuid.unwrap(), tid);
        }
        if d.counter.is_some() {
            let Some(StaticOrDynamicName::Name(name)) = d.static_or_dynamic_name.clone() else { panic!("unnamed") };
            counter_tracks.push((d.uuid.unwrap(), name));
        }
    }
    assert_eq!(thread_of_track.len(), expected.len(), "one track per thread");

    // Slices: begin with the entry's size, end with the return value, per thread in order.
    let mut begun: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut returned: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut last_counter = HashMap::new();
    let mut depth: HashMap<i64, i32> = HashMap::new();
    let mut previous_time = HashMap::new();
    for p in &trace.packet {
        let Some(Data::TrackEvent(e)) = &p.data else { continue };
        let annotation = |name: &str| {
            let a = e.debug_annotations.iter().find(|a| a.name_field == Some(ArgName::Name(name.to_owned())))?;
            match a.value {
                Some(Value::IntValue(v)) => Some(v),
                _ => None,
            }
        };
        match TrackEventType::try_from(e.r#type.unwrap()).unwrap() {
            TrackEventType::Counter => {
                let Some(CounterValueField::CounterValue(value)) = e.counter_value_field else { panic!("no value") };
                last_counter.insert(e.track_uuid.unwrap(), value);
                continue;
            }
            TrackEventType::SliceBegin => {
                let tid = thread_of_track[&e.track_uuid.unwrap()];
                assert_eq!(name_of(e), Some("work"));
                begun.entry(tid).or_default().push(annotation("size").expect("size"));
                *depth.entry(tid).or_default() += 1;
            }
            TrackEventType::SliceEnd => {
                let tid = thread_of_track[&e.track_uuid.unwrap()];
                returned.entry(tid).or_default().push(annotation("ret").expect("ret"));
                *depth.entry(tid).or_default() -= 1;
                assert_eq!(depth[&tid], 0, "work does not recurse: each end closes the one open slice");
            }
            other => panic!("no other events: {other:?}"),
        }
        let tid = thread_of_track[&e.track_uuid.unwrap()];
        let t = p.timestamp.unwrap();
        assert!(previous_time.insert(tid, t).unwrap_or(0) <= t, "time goes on along a thread");
    }
    for (n, (tid, (name, calls))) in expected.iter().enumerate() {
        let want = sizes(n, *calls);
        assert_eq!(begun[tid], want, "{name}'s calls and their sizes");
        assert_eq!(returned[tid], want.iter().map(|s| 2 * s).collect::<Vec<_>>(), "{name}'s return values");
    }
    let total: u64 = expected.values().map(|(_, c)| c).sum();
    assert_eq!(counter_tracks.len(), 2, "a hit counter per probe: {counter_tracks:?}");
    for (uuid, name) in &counter_tracks {
        assert!(name == "hits of work" || name == "hits of work%return", "{name}");
        assert_eq!(last_counter[uuid], total as i64, "{name} ends at the number of calls");
    }
    assert!(text.contains("PROBE"), "the summary is still printed:\n{text}");

    // protoc, where it is installed, decodes the file with the schema too.
    match Command::new("protoc").arg("--version").output() {
        Ok(_) => {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "protoc -I {dir} --decode=perfetto.protos.Trace {dir}/perfetto_trace.proto < {}",
                    file.display()
                ))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let decoded = String::from_utf8_lossy(&o.stdout);
            assert_eq!(decoded.matches("type: TYPE_SLICE_BEGIN").count() as u64, total, "{decoded}");
            assert_eq!(decoded.matches("type: TYPE_SLICE_END").count() as u64, total, "{decoded}");
            for (name, _) in expected.values() {
                assert!(decoded.contains(&format!("thread_name: \"{name}\"")), "{decoded}");
            }
            println!("protoc decoded the trace with the vendored schema: {total} slices");
        }
        Err(_) => println!("protoc not installed: the trace was decoded with prost only"),
    }
    trace_processor_counts_the_slices(&file, &expected);
}

/// The `perfetto` Python package's trace processor, where it can run here.
fn trace_processor_counts_the_slices(file: &std::path::Path, expected: &BTreeMap<i64, (String, u64)>) {
    let script = format!(
        "from perfetto.trace_processor import TraceProcessor\n\
         tp = TraceProcessor(trace='{}')\n\
         for r in tp.query('select thread.tid as tid, count(*) as n from slice join thread_track on slice.track_id = thread_track.id join thread using(utid) group by thread.tid'):\n\
         \x20   print(r.tid, r.n)\n",
        file.display()
    );
    let o = Command::new("python3").arg("-c").arg(&script).output();
    match o {
        Ok(o) if o.status.success() => {
            let counts: BTreeMap<i64, u64> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| {
                    let (t, n) = l.split_once(' ').unwrap();
                    (t.parse().unwrap(), n.parse().unwrap())
                })
                .collect();
            let want: BTreeMap<i64, u64> = expected.iter().map(|(t, (_, c))| (*t, *c)).collect();
            assert_eq!(counts, want, "trace_processor's slices per thread");
            println!("trace_processor: slices per thread as the program made them");
        }
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            println!(
                "perfetto's trace processor not checked: it cannot run here ({})",
                why.lines().last().unwrap_or("no message")
            );
        }
        Err(e) => println!("perfetto's trace processor not checked: no python3 ({e})"),
    }
}

#[test]
fn chrome_json_loads_in_python_with_the_documented_fields() {
    let file = out_file("workers.json");
    let (_, printed) = trace_workers("chrome", &["--trace-file", file.to_str().unwrap(), ENTRY, RETURN]);
    let expected = threads(&printed);
    // Python's own reader, then the fields counted per thread.
    let script = "import json, sys, collections\n\
        d = json.load(open(sys.argv[1]))\n\
        ev = d['traceEvents']\n\
        names = {e['tid']: e['args']['name'] for e in ev if e['ph'] == 'M' and e['name'] == 'thread_name'}\n\
        procs = [e['args']['name'] for e in ev if e['ph'] == 'M' and e['name'] == 'process_name']\n\
        b = collections.Counter(e['tid'] for e in ev if e['ph'] == 'B' and e['name'] == 'work' and 'size' in e['args'] and e['ts'] > 0)\n\
        e_ = collections.Counter(e['tid'] for e in ev if e['ph'] == 'E' and 'ret' in e['args'])\n\
        print('process', *procs)\n\
        for t in sorted(b): print(t, names[t], b[t], e_[t])\n";
    let o = Command::new("python3").arg("-c").arg(script).arg(&file).output().expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut want = "process workers\n".to_owned();
    for (tid, (name, calls)) in &expected {
        want.push_str(&format!("{tid} {name} {calls} {calls}\n"));
    }
    assert_eq!(out, want);
}

#[test]
fn a_trace_file_of_another_kind_is_refused() {
    common::assert_refused(&[(&["--trace-file", "x.txt", "work", "--", "true"], "name it FILE.pftrace")]);
}

/// The callstacks of a Perfetto trace's events, each as its functions' names from the
/// outermost, resolved through the interned data of the packets before it (each name, frame
/// and callstack interned once); for each event: (its type, its name, its stack).
fn stacks_of_events(trace: &Trace) -> Vec<(TrackEventType, Option<String>, Option<Vec<String>>)> {
    let (mut names, mut frames, mut callstacks) = (HashMap::new(), HashMap::new(), HashMap::new());
    let mut events = Vec::new();
    for p in &trace.packet {
        if let Some(i) = &p.interned_data {
            for s in &i.function_names {
                let name = String::from_utf8(s.str.clone().unwrap()).unwrap();
                assert!(names.insert(s.iid.unwrap(), name).is_none(), "a name interned once");
            }
            for f in &i.frames {
                assert!(frames.insert(f.iid.unwrap(), f.function_name_id.unwrap()).is_none(), "a frame interned once");
            }
            for c in &i.callstacks {
                assert!(callstacks.insert(c.iid.unwrap(), c.frame_ids.clone()).is_none(), "a stack interned once");
            }
        }
        let Some(Data::TrackEvent(e)) = &p.data else { continue };
        let stack = e.callstack_field.map(|CallstackField::CallstackIid(iid)| {
            assert_eq!(p.sequence_flags.unwrap_or(0) & 2, 2, "an event using interned data says so");
            callstacks[&iid].iter().map(|f| names[&frames[f]].clone()).collect()
        });
        events.push((TrackEventType::try_from(e.r#type.unwrap()).unwrap(), name_of(e).map(str::to_owned), stack));
    }
    events
}

#[test]
fn perfetto_events_carry_their_callstacks_as_interned_frames() {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.c");
    let program =
        dprobe_test_fixtures::c_program(source, "calls_nofp", &["-O2", "-g", "-pthread", "-fomit-frame-pointer"]);
    let file = out_file("stacks.pftrace");
    let args = ["--engine", "ptrace", "--stack", "--trace-file", file.to_str().unwrap(), "leaf", "mid", "mid%return"];
    let t = common::trace_to_file("pftrace-stacks", &[&args[..], &["--", program, "3"]].concat());
    assert_eq!(t.code, Some(0), "{}", t.what("pftrace-stacks"));
    assert!(t.stdout.starts_with("top-mid-leaf=3 other-leaf=6 "), "{}", t.stdout);
    let trace = Trace::decode(std::fs::read(&file).unwrap().as_slice()).expect("a Trace per Perfetto's schema");
    // From `main` on (the C library's start code below it differs between systems).
    let from_main = |s: &[String]| s[s.iter().position(|f| f == "main").expect("main in every stack")..].join(";");
    let mut leaves = BTreeMap::new();
    let mut mids = Vec::new();
    for (kind, name, stack) in stacks_of_events(&trace) {
        match (kind, name.as_deref()) {
            (TrackEventType::Instant, Some("leaf")) => {
                *leaves.entry(from_main(&stack.expect("a stack"))).or_insert(0) += 1;
            }
            // `mid`'s entry and return are a slice: its stack is the entry's.
            (TrackEventType::SliceBegin, Some("mid")) => mids.push(from_main(&stack.expect("a stack"))),
            (TrackEventType::SliceEnd, _) => assert_eq!(stack, None, "the begin carries the stack"),
            other => panic!("no other events: {other:?}"),
        }
    }
    assert_eq!(leaves, BTreeMap::from([("main;other;leaf".into(), 6), ("main;top;mid;leaf".into(), 3)]));
    assert_eq!(mids, vec!["main;top;mid"; 3]);
}

#[test]
fn an_output_file_that_cannot_be_written_is_refused_before_the_program_runs() {
    let marker = out_file("ran-although-refused");
    let _ = std::fs::remove_file(&marker);
    let m = marker.to_str().unwrap();
    common::assert_refused(&[
        (
            &["--metrics", "/nonexistent-dprobe-dir/m.prom", "libc:getpid", "--", "touch", m],
            "--metrics: cannot write /nonexistent-dprobe-dir/m.prom",
        ),
        (
            &["--folded=/nonexistent-dprobe-dir/f.folded", "libc:getpid", "--", "touch", m],
            "--folded: cannot write /nonexistent-dprobe-dir/f.folded",
        ),
    ]);
    assert!(!marker.exists(), "the program ran, its output would have been lost");
}

/// A trace refused for one output file changes none of the others: a file it would have made
/// is not left behind empty, and one that was there keeps its content.
#[test]
fn a_refused_trace_leaves_the_other_output_files_as_they_were() {
    let (made, kept) = (out_file("refused-new.folded"), out_file("refused-old.folded"));
    let trace_file = out_file("refused-named.txt");
    let _ = std::fs::remove_file(&made);
    let _ = std::fs::remove_file(&trace_file);
    std::fs::write(&kept, "main;work 3\n").unwrap();
    let folded = |path: &std::path::Path| format!("--folded={}", path.display());
    let (made_arg, kept_arg) = (folded(&made), folded(&kept));
    let nowhere = "--metrics=/nonexistent-dprobe-dir/m.prom";
    common::assert_refused(&[
        (&[&made_arg, nowhere, "libc:getpid", "--", "true"], "--metrics: cannot write /nonexistent-dprobe-dir/m.prom"),
        (&[&kept_arg, nowhere, "libc:getpid", "--", "true"], "--metrics: cannot write /nonexistent-dprobe-dir/m.prom"),
        (
            &[&made_arg, "--trace-file", trace_file.to_str().unwrap(), "libc:getpid", "--", "true"],
            "name it FILE.pftrace (Perfetto) or FILE.json",
        ),
    ]);
    assert!(!made.exists(), "a file made for a refused trace is taken away");
    assert!(!trace_file.exists(), "a file made for a refused trace is taken away");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "main;work 3\n");
}
