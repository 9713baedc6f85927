//! Where an event goes once it passed its probe's filter: a line (for people, or a JSON
//! object), or an aggregate (see `aggregates`). Lines keep one reused buffer.

use std::io::Write;
use std::time::Duration;

use dprobe_core::{KeyedTally, ProbeEvent};

use crate::aggregates::{Histograms, KeyCounts, Measure};
use crate::clock::{Clock, TimeFormat};
use crate::keys::KeyPart;
use crate::output::{self, Line, ProbeInfo};
use crate::stacks::StackFrame;

/// An event that passed its probe's filter.
pub struct Passed<'a> {
    /// Which probe (its index).
    pub index: usize,
    /// How it prints.
    pub probe: &'a ProbeInfo,
    /// The event.
    pub event: &'a ProbeEvent<'a>,
    /// At a return paired with its entry: the call's time.
    pub latency: Option<Duration>,
    /// The trace's time base (the event's own time is `event.time_ns`).
    pub clock: &'a Clock,
    /// With `--stack`: the event's stacks as frames, innermost first (empty otherwise).
    pub stack: &'a [StackFrame],
}

/// A sink that aggregates, for the summary.
pub trait Aggregate {
    /// Take one event.
    fn take(&mut self, e: &Passed<'_>);
    /// Take one key's figures, aggregated by the engine itself for probe `t.probe`
    /// (described by `probe`).
    fn absorb(&mut self, t: &KeyedTally, probe: &ProbeInfo) {
        let _ = (t, probe);
    }
    /// Its tables, titled, for the probes described by `probes`.
    fn tables(&self, probes: &[&ProbeInfo]) -> Vec<(String, String)>;
}

/// How lines are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Events as lines, and at the end the summary, on one output.
pub struct Lines {
    out: Box<dyn Write + Send>,
    format: Option<Format>,
    show_time: Option<TimeFormat>,
    line: String,
    /// The first error writing `out`: it ends the trace.
    error: Option<std::io::Error>,
}

impl Lines {
    /// Lines in `format` (none: only the summary) to `out`, human ones with their time if
    /// `show_time` says how.
    pub fn new(out: Box<dyn Write + Send>, format: Option<Format>, show_time: Option<TimeFormat>) -> Lines {
        Lines { out, format, show_time, line: String::new(), error: None }
    }

    /// Write one event.
    pub fn take(&mut self, e: &Passed<'_>) {
        let Some(format) = self.format.filter(|_| self.error.is_none()) else { return };
        let ev = e.event;
        let line = Line {
            time_ns: ev.time_ns,
            clock: e.clock,
            show_time: self.show_time,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm,
            probe: e.probe,
            side: ev.side,
            values: ev.values,
            latency: e.latency,
            stack: e.stack,
        };
        self.line.clear();
        match format {
            Format::Json => output::json(&line, &mut self.line),
            Format::Human => output::human(&line, &mut self.line),
        }
        if let Err(e) = self.out.write_all(self.line.as_bytes()) {
            self.error = Some(e);
        }
    }

    /// The error that made writing fail, if one did (the trace then ends).
    pub fn error(&self) -> Option<&std::io::Error> {
        self.error.as_ref()
    }

    /// Write the closing text (unless writing already failed); the first write error, if any.
    pub fn finish(&mut self, text: &str) -> Option<std::io::Error> {
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()) {
                self.error = Some(e);
            }
        }
        self.error.take()
    }
}

/// The aggregates the options ask for: counts by key (`--count` alone is the summary's own
/// table), a histogram per `--hist` value, call times; each split by `by`.
pub fn aggregates(
    count: bool,
    hists: &[String],
    latency: bool,
    by: &[KeyPart],
    top: Option<usize>,
) -> Vec<Box<dyn Aggregate>> {
    let mut all: Vec<Box<dyn Aggregate>> = Vec::new();
    if count && !by.is_empty() {
        all.push(Box::new(KeyCounts::new(by.to_vec(), top)));
    }
    for field in hists {
        all.push(Box::new(Histograms::new(Measure::Value(field.clone()), by.to_vec(), top)));
    }
    if latency {
        all.push(Box::new(Histograms::new(Measure::Latency, by.to_vec(), top)));
    }
    all
}
