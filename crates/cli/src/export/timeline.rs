//! Events as a timeline: one track per thread under its process, each call (an entry and
//! the return of the same function on the same thread) a slice with the entry's arguments
//! and the return's values, every other hit an instant, and with `--count` a counter per
//! probe. The format is the writer's ([`TimelineWriter`]: Perfetto or Chrome).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use dprobe_core::fetch::Fetched;
use dprobe_core::Side;
use dprobe_spec::ArgType;

use super::Export;
use crate::clock::Clock;
use crate::output::{self, ProbeInfo};
use crate::sinks::Passed;
use crate::stacks::StackFrame;

/// A value of an argument.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    /// A signed integer.
    Int(i64),
    /// An unsigned (or hexadecimal) integer.
    Uint(u64),
    /// A string (bytes that are not UTF-8 written `\xNN`), or `(fault)`.
    Str(String),
}

/// One named argument.
pub type Arg = (String, ArgValue);

/// Where a timeline is written. Times are `CLOCK_MONOTONIC` nanoseconds.
pub trait TimelineWriter {
    /// A process seen for the first time.
    fn process(&mut self, pid: u32, name: &str) -> io::Result<()>;
    /// A thread seen for the first time.
    fn thread(&mut self, pid: u32, tid: u32, name: &str) -> io::Result<()>;
    /// The stack of the next slice to begin or instant (`--stack`), its outermost frame
    /// first; a writer that shows no stacks ignores it.
    fn stack(&mut self, _frames: &[String]) -> io::Result<()> {
        Ok(())
    }
    /// A slice begins on the thread's track.
    fn begin(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()>;
    /// The thread's innermost slice ends, with more arguments.
    fn end(&mut self, t: u64, pid: u32, tid: u32, args: &[Arg]) -> io::Result<()>;
    /// A point in time on the thread's track.
    fn instant(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()>;
    /// Counter `index` (named `name`) is `value` at `t`, in process `pid`.
    fn counter(&mut self, t: u64, pid: u32, index: usize, name: &str, value: u64) -> io::Result<()>;
    /// Complete the file.
    fn finish(&mut self) -> io::Result<()>;
}

/// The timeline export over a writer.
pub struct Timeline<W: TimelineWriter> {
    writer: W,
    path: PathBuf,
    /// Per probe: its function also has a probe on the other side, so its hits are calls.
    calls: Vec<bool>,
    count: bool,
    hits: Vec<u64>,
    processes: HashSet<u32>,
    /// Per thread: the functions whose slices are open, innermost last.
    open: HashMap<u32, Vec<String>>,
    error: Option<io::Error>,
}

impl<W: TimelineWriter> Timeline<W> {
    /// A timeline of `probes` to `writer` (the file at `path`), with counters if `count`.
    pub fn new(writer: W, path: &Path, probes: &[ProbeInfo], count: bool) -> Self {
        let side = |p: &ProbeInfo| (p.label.clone(), p.is_return);
        let all: HashSet<(String, bool)> = probes.iter().filter(|p| !p.tracepoint).map(side).collect();
        let calls = probes.iter().map(|p| !p.tracepoint && all.contains(&(p.label.clone(), !p.is_return))).collect();
        Timeline {
            writer,
            path: path.to_owned(),
            calls,
            count,
            hits: vec![0; probes.len()],
            processes: HashSet::new(),
            open: HashMap::new(),
            error: None,
        }
    }

    fn write(&mut self, e: &Passed<'_>) -> io::Result<()> {
        let ev = e.event;
        let (pid, tid, t) = (ev.pid, ev.tid, ev.time_ns);
        if self.processes.insert(pid) {
            let name = process_name(pid).unwrap_or_else(|| format!("process {pid}"));
            self.writer.process(pid, &name)?;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = self.open.entry(tid) {
            v.insert(Vec::new());
            self.writer.thread(pid, tid, &String::from_utf8_lossy(ev.comm))?;
        }
        let args = arguments(e);
        let label = &e.probe.label;
        let is_return = ev.side == Side::Return || e.probe.is_return;
        if !e.stack.is_empty() {
            let frames: Vec<String> = e.stack.iter().rev().map(frame_name).collect();
            self.writer.stack(&frames)?;
        }
        let stack = self.open.get_mut(&tid).expect("inserted");
        if !is_return && self.calls.get(e.index) == Some(&true) {
            stack.push(label.clone());
            self.writer.begin(t, pid, tid, label, &args)?;
        } else if is_return && stack.contains(label) {
            // Slices left open above it are calls that never returned (a longjmp, an
            // exception): they end here too.
            while let Some(top) = stack.pop() {
                let done = top == *label;
                self.writer.end(t, pid, tid, if done { &args } else { &[] })?;
                if done {
                    break;
                }
            }
        } else if let (true, Some(latency)) = (is_return, e.latency) {
            // A return timed by the engine (--latency): its entry was not shown.
            let start = t.saturating_sub(latency.as_nanos() as u64);
            self.writer.begin(start, pid, tid, label, &[])?;
            self.writer.end(t, pid, tid, &args)?;
        } else {
            self.writer.instant(t, pid, tid, label, &args)?;
        }
        if self.count {
            self.hits[e.index] += 1;
            let name = format!("hits of {}", e.probe.spec.split_whitespace().next().unwrap_or_default());
            self.writer.counter(t, pid, e.index, &name, self.hits[e.index])?;
        }
        Ok(())
    }
}

impl<W: TimelineWriter> Export for Timeline<W> {
    fn take(&mut self, e: &Passed<'_>) {
        if self.error.is_none() {
            if let Err(err) = self.write(e) {
                self.error = Some(err);
            }
        }
    }

    fn finish(&mut self, _clock: &Clock) -> Result<()> {
        let result = match self.error.take() {
            Some(e) => Err(e),
            None => self.writer.finish(),
        };
        result.map_err(|e| anyhow!("cannot write {}: {e}", self.path.display()))
    }
}

/// A frame as a timeline names it: its function (or address), kernel frames marked.
fn frame_name(f: &StackFrame) -> String {
    if f.kernel {
        format!("{} [kernel]", f.name())
    } else {
        f.name()
    }
}

/// The process's name, from `/proc` (once per process).
fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// The event's values by name, typed as JSON types them.
fn arguments(e: &Passed<'_>) -> Vec<Arg> {
    let values = e.event.values;
    let typed = |v: Fetched<'_>| match v {
        Fetched::Int(raw, ArgType::S(_)) => ArgValue::Int(v.as_i64().unwrap_or(raw as i64)),
        Fetched::Int(raw, _) => ArgValue::Uint(raw),
        Fetched::Str { bytes, .. } => ArgValue::Str(output::escape_non_utf8(bytes)),
        Fetched::Fault(_) => ArgValue::Str("(fault)".into()),
    };
    let args = e.probe.args.iter().enumerate();
    args.map(|(i, a)| (a.name.clone(), typed(values.get(i).unwrap_or(Fetched::Fault(0))))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use dprobe_core::fetch::Values;
    use dprobe_core::ProbeEvent;
    use dprobe_spec::parse_probe;

    /// What the timeline asked the writer to do.
    #[derive(Default)]
    struct Record(Vec<String>);

    impl TimelineWriter for Record {
        fn process(&mut self, pid: u32, _: &str) -> io::Result<()> {
            self.0.push(format!("process {pid}"));
            Ok(())
        }
        fn thread(&mut self, _: u32, tid: u32, name: &str) -> io::Result<()> {
            self.0.push(format!("thread {tid} {name}"));
            Ok(())
        }
        fn begin(&mut self, t: u64, _: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
            self.0.push(format!("{t} {tid} begin {name} {args:?}"));
            Ok(())
        }
        fn end(&mut self, t: u64, _: u32, tid: u32, args: &[Arg]) -> io::Result<()> {
            self.0.push(format!("{t} {tid} end {args:?}"));
            Ok(())
        }
        fn instant(&mut self, t: u64, _: u32, tid: u32, name: &str, _: &[Arg]) -> io::Result<()> {
            self.0.push(format!("{t} {tid} instant {name}"));
            Ok(())
        }
        fn counter(&mut self, t: u64, _: u32, index: usize, name: &str, value: u64) -> io::Result<()> {
            self.0.push(format!("{t} counter {index} {name} {value}"));
            Ok(())
        }
        fn finish(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn info(spec: &str, label: &str) -> ProbeInfo {
        let p = parse_probe(spec).unwrap();
        ProbeInfo {
            shown: Vec::new(),
            spec: spec.into(),
            label: label.into(),
            is_return: p.kind == dprobe_spec::ProbeKind::Return,
            args: p.args,
            retval_index: None,
            errno_index: None,
            tracepoint: false,
            errno_in_retval: false,
        }
    }

    fn feed(t: &mut Timeline<Record>, probes: &[ProbeInfo], events: &[(usize, u32, u64, i64, Option<u64>)]) {
        let clock = Clock::from_parts(0, 0, jiff::tz::TimeZone::UTC);
        for &(index, tid, time_ns, value, latency) in events {
            let mut values = Values::with_capacity(1);
            values.push_int(value as u64, ArgType::S(64));
            let side = if probes[index].is_return || latency.is_some() { Side::Return } else { Side::Entry };
            let event = ProbeEvent { probe: index, ..crate::report::tests::event(&values, side, tid, time_ns) };
            let latency = latency.map(Duration::from_nanos);
            t.take(&Passed { index, probe: &probes[index], event: &event, latency, clock: &clock, stack: &[] });
        }
    }

    #[test]
    fn entries_and_returns_of_one_function_nest_as_slices_per_thread() {
        let probes = [info("f x=$arg1:s64", "f"), info("f%return r=$retval:s64", "f"), info("g y=$arg1:s64", "g")];
        let mut t = Timeline::new(Record::default(), Path::new("t.pftrace"), &probes, true);
        feed(
            &mut t,
            &probes,
            &[
                (0, 7, 10, 1, None), // f(1) on thread 7
                (0, 7, 20, 2, None), // f(2) inside it
                (2, 7, 25, 5, None), // g: no return probe, an instant
                (1, 7, 30, 4, None), // the inner one returns 4
                (1, 8, 35, 9, None), // a return on thread 8 whose entry was not seen
                (1, 7, 40, 2, None), // the outer one returns 2
            ],
        );
        let r = &t.writer.0;
        let lines: Vec<&str> = r.iter().map(String::as_str).filter(|l| !l.contains("counter")).collect();
        assert_eq!(
            lines,
            [
                "process 1",
                "thread 7 t",
                "10 7 begin f [(\"x\", Int(1))]",
                "20 7 begin f [(\"x\", Int(2))]",
                "25 7 instant g",
                "30 7 end [(\"r\", Int(4))]",
                "thread 8 t",
                "35 8 instant f",
                "40 7 end [(\"r\", Int(2))]",
            ]
        );
        let counters: Vec<&str> = r.iter().map(String::as_str).filter(|l| l.contains("counter")).collect();
        assert_eq!(counters.len(), 6, "one counter value per hit");
        assert_eq!(counters[5], "40 counter 1 hits of f%return 3");
    }

    #[test]
    fn a_return_past_calls_that_never_returned_ends_them_and_a_timed_return_is_a_whole_slice() {
        let probes = [
            info("f x=$arg1:s64", "f"),
            info("f%return r=$retval:s64", "f"),
            info("h x=$arg1:s64", "h"),
            info("h%return r=$retval:s64", "h"),
            info("g y=$arg1:s64", "g"),
        ];
        let mut t = Timeline::new(Record::default(), Path::new("t.json"), &probes, false);
        feed(&mut t, &probes, &[(0, 7, 10, 1, None), (2, 7, 20, 2, None), (1, 7, 50, 0, None)]);
        feed(&mut t, &probes, &[(4, 7, 100, 3, Some(30))]);
        let lines: Vec<&str> = t.writer.0.iter().map(String::as_str).skip(2).collect();
        assert_eq!(
            lines,
            [
                "10 7 begin f [(\"x\", Int(1))]",
                "20 7 begin h [(\"x\", Int(2))]",
                "50 7 end []",
                "50 7 end [(\"r\", Int(0))]",
                "70 7 begin g []",
                "100 7 end [(\"y\", Int(3))]",
            ],
            "f returns while h, called from it, never did (a longjmp): h ends with f"
        );
    }
}
