//! What every engine's hits go through: the filter, then an event line (human or JSON) or
//! the aggregates (counts, histograms, latencies), and at the end the summary. Sizes are
//! bounded: one entry per probe, fixed-size histograms, one reused line buffer.

use std::io::Write;
use std::time::{Duration, Instant};

use dprobe_spec::Filter;

use crate::fetch::Fetched;
use crate::histogram::Log2Histogram;
use crate::output::{self, Event, ProbeInfo};

/// How events are shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, for people.
    Human,
    /// One JSON object per event.
    Json,
    /// Only aggregates (`--count`, `--hist`, `--latency`).
    Quiet,
}

/// One probe's share.
pub struct ProbeState {
    /// How it prints.
    pub info: ProbeInfo,
    /// Events that passed the filter.
    pub shown: u64,
    hist: Log2Histogram,
    latency: Log2Histogram,
}

/// The output and the aggregates.
pub struct Report {
    out: Box<dyn Write>,
    line: String,
    mode: Mode,
    filter: Option<Filter>,
    hist_field: Option<String>,
    latency: bool,
    /// When tracing started.
    pub start: Instant,
    /// The probes, in the order given.
    pub probes: Vec<ProbeState>,
    write_failed: bool,
}

impl Report {
    /// A report writing to `out`.
    pub fn new(
        out: Box<dyn Write>,
        mode: Mode,
        filter: Option<Filter>,
        hist_field: Option<String>,
        latency: bool,
    ) -> Report {
        Report {
            out,
            line: String::new(),
            mode,
            filter,
            hist_field,
            latency,
            start: Instant::now(),
            probes: Vec::new(),
            write_failed: false,
        }
    }

    /// Add a probe; its index is the order of the calls.
    pub fn add_probe(&mut self, info: ProbeInfo) {
        self.probes.push(ProbeState {
            info,
            shown: 0,
            hist: Log2Histogram::default(),
            latency: Log2Histogram::default(),
        });
    }

    /// One hit of probe `index` with its fetched `values`.
    pub fn record(
        &mut self,
        index: usize,
        pid: i32,
        tid: i32,
        comm: &[u8],
        values: &[Fetched],
        latency: Option<Duration>,
    ) {
        let probe = &mut self.probes[index];
        let passes = self.filter.as_ref().is_none_or(|f| {
            f.matches(&|name| {
                let i = probe.info.args.iter().position(|a| a.name == name)?;
                values[i].filter_value()
            })
        });
        if !passes {
            return;
        }
        probe.shown += 1;
        if let Some(field) = &self.hist_field {
            if let Some(v) = probe.info.args.iter().position(|a| &a.name == field).and_then(|i| values[i].as_i64()) {
                probe.hist.add(v);
            }
        }
        if let Some(l) = latency {
            probe.latency.add(l.as_nanos().min(i64::MAX as u128) as i64);
        }
        if self.mode == Mode::Quiet || self.write_failed {
            return;
        }
        let time = self.start.elapsed().as_secs_f64();
        let event = Event { time, pid, tid, comm, probe: &probe.info, values, latency };
        self.line.clear();
        match self.mode {
            Mode::Json => output::json(&event, &mut self.line),
            _ => output::human(&event, &mut self.line),
        }
        // A closed output (`| head`) ends printing, not tracing.
        self.write_failed = self.out.write_all(self.line.as_bytes()).is_err();
    }

    /// The histograms asked for, titled.
    pub fn histograms(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(field) = &self.hist_field {
            for p in self.probes.iter().filter(|p| p.hist.total() > 0) {
                let target = p.info.spec.split_whitespace().next().unwrap_or_default();
                out.push((format!("{field} of {target}"), p.hist.render("")));
            }
        }
        if self.latency {
            for p in self.probes.iter().filter(|p| p.latency.total() > 0) {
                out.push((format!("latency of {} (ns)", p.info.label), p.latency.render("")));
            }
        }
        out
    }

    /// Write the closing text.
    pub fn finish(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Whether a filter is set.
    pub fn filtered(&self) -> bool {
        self.filter.is_some()
    }
}
