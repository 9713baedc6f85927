//! `--metrics FILE`: the trace's figures in the OpenMetrics text format, for a Prometheus
//! node exporter's textfile collector or an OpenTelemetry collector: hits per probe (and key,
//! with `--by`) as a counter, each `--hist` value and `--latency` as histograms over log2
//! buckets. The file is written whole to a temporary name beside it, then renamed over it, so
//! a collector never reads half a file: at the end, and with `--interval` periodically.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::Export;
use crate::clock::Clock;
use dprobe_core::KeyedTally;

use crate::keys::{key_of, tally_key, KeyPart};
use crate::output::ProbeInfo;
use crate::sinks::Passed;

/// Distinct keys kept per probe; past them new keys count as `(other)`.
const MAX_KEYS: usize = 65_536;

/// Buckets: negative values, zero, then `[2^k, 2^(k+1))` for k = 0..63.
const BUCKETS: usize = 66;

/// A histogram as OpenMetrics reports it: counts per bucket, their sum and count.
#[derive(Clone)]
pub struct Buckets {
    counts: [u64; BUCKETS],
    sum: i128,
    count: u64,
    negative: bool,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { counts: [0; BUCKETS], sum: 0, count: 0, negative: false }
    }
}

impl Buckets {
    /// Count `n` values in `v`'s bucket, which sum to `sum`, the smallest `min`.
    pub fn add_many(&mut self, v: i64, n: u64, sum: i128, min: i64) {
        self.counts[Self::bucket(v)] += n;
        self.sum += sum;
        self.count += n;
        self.negative |= min < 0;
    }

    /// The bucket of `v`.
    fn bucket(v: i64) -> usize {
        match v {
            ..=-1 => 0,
            0 => 1,
            v => 2 + (63 - v.leading_zeros() as usize),
        }
    }

    /// Count one value.
    pub fn add(&mut self, v: i64) {
        self.counts[Self::bucket(v)] += 1;
        self.sum += i128::from(v);
        self.count += 1;
        self.negative |= v < 0;
    }

    /// The inclusive upper bound of bucket `b` (integer values: `[2^k, 2^(k+1))` is
    /// `le 2^(k+1)-1`).
    fn le(b: usize) -> i128 {
        match b {
            0 => -1,
            1 => 0,
            b => (1i128 << (b - 1)) - 1,
        }
    }
}

/// What one probe gathered for one key.
#[derive(Default, Clone)]
struct Figures {
    hits: u64,
    hists: Vec<Buckets>,
    latency: Buckets,
}

/// The metrics export.
pub struct Metrics {
    path: PathBuf,
    interval: Option<Duration>,
    last: Instant,
    probes: Vec<String>,
    by: Vec<KeyPart>,
    hists: Vec<String>,
    latency: bool,
    per_probe: Vec<HashMap<String, Figures>>,
    /// What the engine aggregated itself, as last read: per probe, by key.
    tallied: Vec<HashMap<String, Figures>>,
    infos: Vec<ProbeInfo>,
    key: String,
    /// The first error writing the file.
    error: Option<anyhow::Error>,
}

impl Metrics {
    /// Metrics of `probes` to `path`: hits split by `by`, histograms of the values named
    /// `hists`, call times if `latency`; rewritten every `interval` if given. The file is
    /// written once now, empty of figures, so that from the start it holds this trace's
    /// metrics, not an earlier run's (its path was checked before: `output_files.rs`).
    pub fn new(
        path: &Path,
        interval: Option<Duration>,
        probes: &[ProbeInfo],
        by: &[KeyPart],
        hists: &[String],
        latency: bool,
    ) -> Result<Metrics> {
        let metrics = Metrics {
            path: path.to_owned(),
            interval,
            last: Instant::now(),
            probes: probes.iter().map(|p| p.spec.split_whitespace().next().unwrap_or_default().to_owned()).collect(),
            by: by.to_vec(),
            hists: hists.to_vec(),
            latency,
            per_probe: probes.iter().map(|_| HashMap::new()).collect(),
            tallied: probes.iter().map(|_| HashMap::new()).collect(),
            infos: probes.to_vec(),
            key: String::new(),
            error: None,
        };
        metrics.write().context("--metrics")?;
        Ok(metrics)
    }

    /// The whole file.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.families();
        let _ = writeln!(out, "# TYPE dprobe_hits counter");
        let _ = writeln!(out, "# HELP dprobe_hits Hits of each probe that passed its filter.");
        for (labels, f) in &families {
            let _ = writeln!(out, "dprobe_hits_total{{{labels}}} {}", f.hits);
        }
        if !self.hists.is_empty() {
            let _ = writeln!(out, "# TYPE dprobe_value histogram");
            let _ = writeln!(out, "# HELP dprobe_value Values fetched by the probes (--hist), by field.");
            for (n, field) in self.hists.iter().enumerate() {
                for (labels, f) in &families {
                    if let Some(b) = f.hists.get(n).filter(|b| b.count > 0) {
                        let labels = format!("{labels},field=\"{}\"", escape(field));
                        histogram(&mut out, "dprobe_value", &labels, b);
                    }
                }
            }
        }
        if self.latency {
            let _ = writeln!(out, "# TYPE dprobe_latency_nanoseconds histogram");
            let _ = writeln!(out, "# UNIT dprobe_latency_nanoseconds nanoseconds");
            let _ = writeln!(out, "# HELP dprobe_latency_nanoseconds Time from a function's entry to its return.");
            for (labels, f) in &families {
                if f.latency.count > 0 {
                    histogram(&mut out, "dprobe_latency_nanoseconds", labels, &f.latency);
                }
            }
        }
        out.push_str("# EOF\n");
        out
    }

    /// Every (labels, figures), by probe then key: from the events and from what the engine
    /// aggregated itself.
    fn families(&self) -> Vec<(String, Figures)> {
        let mut all = Vec::new();
        for (i, (events, tallied)) in self.per_probe.iter().zip(&self.tallied).enumerate() {
            let mut map = events.clone();
            for (key, t) in tallied {
                let f = map.entry(key.clone()).or_insert_with(|| self.figures());
                f.hits += t.hits;
                for (mine, theirs) in f.hists.iter_mut().zip(&t.hists) {
                    for (b, n) in theirs.counts.iter().enumerate() {
                        mine.counts[b] += n;
                    }
                    mine.sum += theirs.sum;
                    mine.count += theirs.count;
                    mine.negative |= theirs.negative;
                }
            }
            let mut keys: Vec<(String, Figures)> = map.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, f) in keys {
                let mut labels = format!("probe=\"{}\"", escape(&self.probes[i]));
                for (part, text) in self.by.iter().zip(key.split('\t')) {
                    let name = match part {
                        KeyPart::Comm => "comm".to_owned(),
                        KeyPart::Pid => "pid".to_owned(),
                        KeyPart::Tid => "tid".to_owned(),
                        KeyPart::Stack => "stack".to_owned(),
                        KeyPart::Value(name) => format!("arg_{name}"),
                    };
                    let _ = write!(labels, ",{name}=\"{}\"", escape(text));
                }
                all.push((labels, f));
            }
        }
        all
    }

    /// Nothing gathered yet, with room for each histogram.
    fn figures(&self) -> Figures {
        Figures { hists: vec![Buckets::default(); self.hists.len()], ..Figures::default() }
    }

    /// Write the file: a temporary file beside it, renamed over it.
    fn write(&self) -> Result<()> {
        let temporary = super::output_files::temporary_beside(&self.path);
        std::fs::write(&temporary, self.render())
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// A histogram's lines: cumulative buckets up to the last one used, `+Inf`, count and sum.
/// OpenMetrics allows a sum only where no bucket is negative: the negative bucket (`le -1`)
/// is written only when a value was negative, and then the sum is not.
fn histogram(out: &mut String, name: &str, labels: &str, b: &Buckets) {
    let last = (0..BUCKETS).rev().find(|&i| b.counts[i] > 0).unwrap_or(0);
    let first = if b.negative { 0 } else { 1 };
    let mut cumulative = 0;
    for i in first..=last.max(first) {
        cumulative += b.counts[i];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", Buckets::le(i));
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", b.count);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", b.count);
    if !b.negative {
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", b.sum);
    }
}

/// A label value: `\`, `"` and newlines escaped.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Export for Metrics {
    fn take(&mut self, e: &Passed<'_>) {
        let Some(map) = self.per_probe.get_mut(e.index) else { return };
        key_of(&self.by, e, &mut self.key);
        let key = if map.contains_key(&self.key) || map.len() < MAX_KEYS { self.key.as_str() } else { "(other)" };
        if !map.contains_key(key) {
            let figures = Figures { hists: vec![Buckets::default(); self.hists.len()], ..Figures::default() };
            map.insert(key.to_owned(), figures);
        }
        let f = map.get_mut(key).expect("inserted");
        f.hits += 1;
        for (n, field) in self.hists.iter().enumerate() {
            let at = e.probe.args.iter().position(|a| &a.name == field);
            if let Some(v) = at.and_then(|i| e.event.values.get(i)).and_then(|v| v.as_i64()) {
                f.hists[n].add(v);
            }
        }
        if let (true, Some(l)) = (self.latency, e.latency) {
            f.latency.add(l.as_nanos().min(i64::MAX as u128) as i64);
        }
    }

    fn due(&self) -> bool {
        self.interval.is_some_and(|i| self.error.is_none() && self.last.elapsed() >= i)
    }

    /// The engine aggregates one `--hist` at most: the first.
    fn tallied(&mut self, tallies: &[KeyedTally]) {
        let empty = self.figures();
        for map in &mut self.tallied {
            map.clear();
        }
        for t in tallies {
            let (Some(map), Some(probe)) = (self.tallied.get_mut(t.probe), self.infos.get(t.probe)) else { continue };
            tally_key(&self.by, t, probe, &mut self.key);
            let key = if map.contains_key(&self.key) || map.len() < MAX_KEYS { self.key.as_str() } else { "(other)" };
            if !map.contains_key(key) {
                map.insert(key.to_owned(), empty.clone());
            }
            let f = map.get_mut(key).expect("inserted");
            f.hits += t.count;
            let first = self.hists.first().filter(|field| probe.args.iter().any(|a| &&a.name == field));
            if let (Some(_), Some(v), Some(b)) = (first, t.value, f.hists.first_mut()) {
                b.add_many(v, t.count, t.sum, t.min);
            }
        }
    }

    fn tick(&mut self, _clock: &Clock) {
        let Some(interval) = self.interval else { return };
        if self.error.is_none() && self.last.elapsed() >= interval {
            self.last = Instant::now();
            if let Err(e) = self.write() {
                self.error = Some(e);
            }
        }
    }

    fn finish(&mut self, _clock: &Clock) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_to_each_integer_bound_with_a_sum_only_without_negatives() {
        let mut b = Buckets::default();
        for v in [0, 1, 2, 3, 4, 1000] {
            b.add(v);
        }
        let mut out = String::new();
        histogram(&mut out, "m", "p=\"x\"", &b);
        let expected = [
            "m_bucket{p=\"x\",le=\"0\"} 1",
            "m_bucket{p=\"x\",le=\"1\"} 2",
            "m_bucket{p=\"x\",le=\"3\"} 4",
            "m_bucket{p=\"x\",le=\"7\"} 5",
        ];
        assert!(out.starts_with(&(expected.join("\n") + "\n")), "{out}");
        assert!(out.contains("m_bucket{p=\"x\",le=\"1023\"} 6\nm_bucket{p=\"x\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.ends_with("m_count{p=\"x\"} 6\nm_sum{p=\"x\"} 1010\n"), "{out}");

        b.add(-5);
        out.clear();
        histogram(&mut out, "m", "p=\"x\"", &b);
        assert!(out.starts_with("m_bucket{p=\"x\",le=\"-1\"} 1\nm_bucket{p=\"x\",le=\"0\"} 2\n"), "{out}");
        assert!(out.ends_with("m_count{p=\"x\"} 7\n"), "no sum with a negative value: {out}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
