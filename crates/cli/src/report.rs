//! What every engine's events go through: entries of timed probes paired with their returns
//! (one place for every engine), the probe's filter, the count of what passed, then the
//! sinks: lines (human or JSON), value histograms, latency histograms. Sizes are bounded: one
//! entry per probe, fixed-size histograms, one reused line buffer, a bounded set of pending
//! entries.

use std::io::Write;
use std::time::Instant;

use dprobe_core::fetch::FetchPlan;
use dprobe_core::{KeyedTally, LiveTallies, Pairing, ProbeEvent, Side};

use crate::clock::{Clock, TimeFormat};
use crate::export::Export;
use crate::output::ProbeInfo;
use crate::sinks::{Aggregate, Format, Lines, Passed};
use crate::stacks::{StackFrame, Stacks};

/// Pending entries kept for `--latency`, over all threads; more are dropped and counted.
const MAX_PENDING: usize = 65_536;

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
    /// Its fetches and the filter.
    pub plan: FetchPlan,
    /// Timed from entry to return: its entries are paired, its returns shown.
    pub timed: bool,
    /// Events that passed the filter.
    pub shown: u64,
}

/// The pairing, the filter, the counts and the sinks.
pub struct Report {
    lines: Lines,
    aggregates: Vec<Box<dyn Aggregate>>,
    exports: Vec<Box<dyn Export + Send>>,
    filtered: bool,
    pairing: Pairing,
    /// When tracing started.
    pub start: Instant,
    /// The trace's time base, taken when tracing starts.
    pub clock: Clock,
    /// The probes, in the order given.
    pub probes: Vec<ProbeState>,
    /// With `--stack`: what symbolizes the events' stacks, and the frames of the last one.
    stacks: Option<Stacks>,
    frames: Vec<StackFrame>,
    /// What reads the figures the engine aggregates itself, while tracing.
    live: Option<LiveTallies>,
}

impl Report {
    /// A report writing to `out`.
    pub fn new(
        out: Box<dyn Write + Send>,
        mode: Mode,
        show_time: Option<TimeFormat>,
        filtered: bool,
        aggregates: Vec<Box<dyn Aggregate>>,
    ) -> Report {
        let format = match mode {
            Mode::Human => Some(Format::Human),
            Mode::Json => Some(Format::Json),
            Mode::Quiet => None,
        };
        Report {
            lines: Lines::new(out, format, show_time),
            aggregates,
            exports: Vec::new(),
            filtered,
            pairing: Pairing::new(MAX_PENDING),
            start: Instant::now(),
            clock: Clock::start(),
            probes: Vec::new(),
            stacks: None,
            frames: Vec::new(),
            live: None,
        }
    }

    /// Show the events' stacks (`--stack`), symbolized.
    pub fn with_stacks(&mut self) {
        self.stacks = Some(Stacks::new());
    }

    /// Read what symbolizing process `pid`'s stacks needs before the trace runs.
    pub fn prepare_stacks(&mut self, pid: u32) {
        if let Some(s) = &mut self.stacks {
            s.prepare(pid);
        }
    }

    /// Add a probe; its index is the order of the calls.
    pub fn add_probe(&mut self, info: ProbeInfo, plan: FetchPlan, timed: bool) {
        self.probes.push(ProbeState { info, plan, timed, shown: 0 });
    }

    /// One event.
    pub fn event(&mut self, e: &ProbeEvent<'_>) {
        let Some(probe) = self.probes.get_mut(e.probe) else { return };
        let latency = match e.side {
            Side::Entry if !probe.timed => None,
            _ => self.pairing.latency(e),
        };
        if probe.timed && latency.is_none() {
            // A timed probe's entry waits for its return; a return whose entry was not seen
            // is no call to time.
            return;
        }
        if !probe.plan.passes(e.values) {
            return;
        }
        probe.shown += 1;
        if let Some(stacks) = &mut self.stacks {
            stacks.frames(e, &mut self.frames);
        }
        let stack = &self.frames;
        let passed = Passed { index: e.probe, probe: &probe.info, event: e, latency, clock: &self.clock, stack };
        for a in &mut self.aggregates {
            a.take(&passed);
        }
        for x in &mut self.exports {
            x.take(&passed);
        }
        self.lines.take(&passed);
    }

    /// Figures an engine aggregated itself, by key, for probes whose events it kept.
    pub fn absorb(&mut self, tallies: &[KeyedTally]) {
        for x in &mut self.exports {
            x.tallied(tallies);
        }
        for t in tallies {
            let Some(probe) = self.probes.get_mut(t.probe) else { continue };
            probe.shown += t.count;
            for a in &mut self.aggregates {
                a.absorb(t, &probe.info);
            }
        }
    }

    /// Write the events to `export` too.
    pub fn add_export(&mut self, export: Box<dyn Export + Send>) {
        self.exports.push(export);
    }

    /// Read what the engine aggregates itself with `live` while tracing, for the exports
    /// rewritten periodically.
    pub fn with_live_tallies(&mut self, live: LiveTallies) {
        self.live = Some(live);
    }

    /// Now and then while tracing: exports that rewrite their file periodically do, with
    /// the engine's own figures as they are now.
    pub fn tick(&mut self) {
        if let Some(live) = self.live.as_ref().filter(|_| self.exports.iter().any(|x| x.due())) {
            let tallies = live();
            for x in &mut self.exports {
                x.tallied(&tallies);
            }
        }
        for x in &mut self.exports {
            x.tick(&self.clock);
        }
    }

    /// The aggregates' tables, titled.
    pub fn histograms(&self) -> Vec<(String, String)> {
        let infos: Vec<&ProbeInfo> = self.probes.iter().map(|p| &p.info).collect();
        self.aggregates.iter().flat_map(|a| a.tables(&infos)).collect()
    }

    /// What the summary says about the report itself: entries that could not be timed.
    pub fn notes(&self) -> Vec<String> {
        match self.pairing.dropped {
            0 => Vec::new(),
            n => vec![format!("{n} entries not timed: {} calls were already pending", self.pairing.limit())],
        }
    }

    /// The error that made writing the output fail, if one did (the trace then ends).
    pub fn write_error(&self) -> Option<&std::io::Error> {
        self.lines.error()
    }

    /// Whether a filter is set.
    pub fn filtered(&self) -> bool {
        self.filtered
    }

    /// What is left to complete once the trace is over: the output and the exports' files.
    pub fn into_outputs(self) -> Outputs {
        Outputs { lines: self.lines, exports: self.exports, clock: self.clock }
    }
}

/// A report's output and export files, to complete once the trace is over. Nothing in it is
/// the engine's: it may be completed on another thread than the one that traced (which may
/// have to end first, see `trace::on_a_tracer_thread`).
pub struct Outputs {
    lines: Lines,
    exports: Vec<Box<dyn Export + Send>>,
    clock: Clock,
}

impl Outputs {
    /// Complete every export's file; the errors met writing them.
    pub fn finish_exports(&mut self) -> Vec<anyhow::Error> {
        self.exports.iter_mut().filter_map(|x| x.finish(&self.clock).err()).collect()
    }

    /// Write the closing text; the first error writing the output, if any.
    pub fn finish(&mut self, text: &str) -> Option<std::io::Error> {
        self.lines.finish(text)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use dprobe_core::fetch::Values;
    use dprobe_spec::{parse_filter, parse_probe, ArgType};

    /// What the report wrote.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);
    impl Write for Written {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn info(spec: &str) -> (ProbeInfo, Vec<dprobe_spec::NamedArg>) {
        let p = parse_probe(spec).unwrap();
        let info = ProbeInfo {
            spec: spec.into(),
            label: "f".into(),
            args: p.args.clone(),
            shown: Vec::new(),
            is_return: false,
            retval_index: None,
            errno_index: None,
            tracepoint: false,
            errno_in_retval: false,
        };
        (info, p.args)
    }

    /// An event of probe 0 from thread `tid` of process 1 (`t`), without stacks.
    pub(crate) fn event(values: &Values, side: Side, tid: u32, time_ns: u64) -> ProbeEvent<'_> {
        ProbeEvent {
            probe: 0,
            side,
            pid: 1,
            tid,
            maps_of: 1,
            time_ns,
            entry_time_ns: None,
            comm: b"t",
            values,
            user_stack: &[],
            kernel_stack: &[],
        }
    }

    #[test]
    fn entries_of_an_engine_that_does_not_pair_are_timed_to_their_returns() {
        let (i, args) = info("f x=$arg1:s64");
        let mut r = Report::new(
            Box::new(Written::default()),
            Mode::Quiet,
            None,
            false,
            crate::sinks::aggregates(false, &[], true, &[], None),
        );
        r.add_probe(i, FetchPlan::compile(&args, None), true);
        let mut v = Values::with_capacity(1);
        v.push_int(1, ArgType::S(64));
        r.event(&event(&v, Side::Entry, 7, 100));
        r.event(&event(&v, Side::Entry, 7, 150));
        r.event(&event(&v, Side::Return, 7, 158)); // 8 ns: the inner call
        r.event(&event(&v, Side::Return, 7, 400)); // 300 ns: the outer one
        r.event(&event(&v, Side::Return, 8, 500)); // no entry seen on thread 8
        assert_eq!(r.probes[0].shown, 2, "two calls timed, the unpaired return dropped");
        let hists = r.histograms();
        assert_eq!(hists.len(), 1);
        assert_eq!(hists[0].0, "latency of f (ns)");
        let table = &hists[0].1;
        assert!(table.starts_with("count 2, min 8, p50 8, p90 300, p99 300, max 300\n[8, 16) "), "{table}");
        assert!(table.contains("\n[256, 512) "), "{table}");
    }

    #[test]
    fn the_filter_decides_what_is_shown_and_counted() {
        let (i, args) = info("f x=$arg1:s64");
        let filter = parse_filter("x > 1", &["x"]).unwrap();
        let written = Written::default();
        let mut r = Report::new(Box::new(written.clone()), Mode::Human, None, true, Vec::new());
        r.add_probe(i, FetchPlan::compile(&args, Some(&filter)), false);
        for x in [1, 2, 3] {
            let mut v = Values::with_capacity(1);
            v.push_int(x, ArgType::S(64));
            r.event(&event(&v, Side::Entry, 7, 0));
        }
        assert_eq!(r.probes[0].shown, 2);
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "process 't' (7) call f(x=2)\nprocess 't' (7) call f(x=3)\n");
    }
}
