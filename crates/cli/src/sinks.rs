//! Where an event goes once it passed its probe's filter: a line (for people, or a JSON
//! object), a histogram of one fetched value, a histogram of call latencies. Each keeps
//! bounded state: one reused line buffer, one fixed-size histogram per probe.

use std::io::Write;
use std::time::Duration;

use dprobe_core::ProbeEvent;

use crate::histogram::Log2Histogram;
use crate::output::{self, Line, ProbeInfo};

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
    /// Seconds since tracing started.
    pub time: f64,
}

/// A sink that aggregates, for the summary.
pub trait Aggregate {
    /// Take one event.
    fn take(&mut self, e: &Passed<'_>);
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
    out: Box<dyn Write>,
    format: Option<Format>,
    line: String,
    /// The first error writing `out`: it ends the trace.
    error: Option<std::io::Error>,
}

impl Lines {
    /// Lines in `format` (none: only the summary) to `out`.
    pub fn new(out: Box<dyn Write>, format: Option<Format>) -> Lines {
        Lines { out, format, line: String::new(), error: None }
    }

    /// Write one event.
    pub fn take(&mut self, e: &Passed<'_>) {
        let Some(format) = self.format.filter(|_| self.error.is_none()) else { return };
        let ev = e.event;
        let line = Line {
            time: e.time,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm,
            probe: e.probe,
            side: ev.side,
            values: ev.values,
            latency: e.latency,
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

/// Grow `hists` to hold `index`.
fn slot(hists: &mut Vec<Log2Histogram>, index: usize) -> &mut Log2Histogram {
    if hists.len() <= index {
        hists.resize_with(index + 1, Log2Histogram::default);
    }
    &mut hists[index]
}

/// `--hist NAME`: a histogram of the value `NAME` per probe.
pub struct ValueHistograms {
    field: String,
    hists: Vec<Log2Histogram>,
}

impl ValueHistograms {
    /// Histograms of the value named `field`.
    pub fn new(field: String) -> ValueHistograms {
        ValueHistograms { field, hists: Vec::new() }
    }
}

impl Aggregate for ValueHistograms {
    fn take(&mut self, e: &Passed<'_>) {
        let at = e.probe.args.iter().position(|a| a.name == self.field);
        if let Some(v) = at.and_then(|i| e.event.values.get(i)).and_then(|v| v.as_i64()) {
            slot(&mut self.hists, e.index).add(v);
        }
    }

    fn tables(&self, probes: &[&ProbeInfo]) -> Vec<(String, String)> {
        let used = self.hists.iter().zip(probes).filter(|(h, _)| h.total() > 0);
        used.map(|(h, p)| {
            let target = p.spec.split_whitespace().next().unwrap_or_default();
            (format!("{} of {target}", self.field), h.render(""))
        })
        .collect()
    }
}

/// `--latency`: a histogram of call times per probe, in nanoseconds.
#[derive(Default)]
pub struct LatencyHistograms {
    hists: Vec<Log2Histogram>,
}

impl Aggregate for LatencyHistograms {
    fn take(&mut self, e: &Passed<'_>) {
        if let Some(l) = e.latency {
            slot(&mut self.hists, e.index).add(l.as_nanos().min(i64::MAX as u128) as i64);
        }
    }

    fn tables(&self, probes: &[&ProbeInfo]) -> Vec<(String, String)> {
        let used = self.hists.iter().zip(probes).filter(|(h, _)| h.total() > 0);
        used.map(|(h, p)| (format!("latency of {} (ns)", p.label), h.render(""))).collect()
    }
}
