//! The aggregating sinks: counts by key (`--count --by`), histograms of a fetched value
//! (`--hist NAME`) and of call times (`--latency`), each one per probe and key. The keys are
//! bounded: past `MAX_KEYS` per probe, new keys are counted together as `(other)`.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::distribution::Distribution;
use dprobe_core::KeyedTally;

use crate::keys::{bracketed, key_of, tally_key, KeyPart};
use crate::output::ProbeInfo;
use crate::sinks::{Aggregate, Passed};

/// Distinct keys kept per probe.
const MAX_KEYS: usize = 65_536;

/// The key that stands for every key past `MAX_KEYS`.
const OTHER: &str = "(other)";

/// What each probe gathers, by key.
struct Keyed<T> {
    by: Vec<KeyPart>,
    top: Option<usize>,
    per_probe: Vec<HashMap<String, T>>,
    key: String,
}

impl<T: Default> Keyed<T> {
    fn new(by: Vec<KeyPart>, top: Option<usize>) -> Self {
        Keyed { by, top, per_probe: Vec::new(), key: String::new() }
    }

    /// What `e`'s key has gathered so far.
    fn entry(&mut self, e: &Passed<'_>) -> &mut T {
        key_of(&self.by, e, &mut self.key);
        self.slot(e.index)
    }

    /// What the key of `t` (figures the engine aggregated) has gathered so far.
    fn tallied(&mut self, t: &KeyedTally, probe: &ProbeInfo) -> &mut T {
        tally_key(&self.by, t, probe, &mut self.key);
        self.slot(t.probe)
    }

    /// What the key in `self.key` has gathered for probe `index`.
    fn slot(&mut self, index: usize) -> &mut T {
        if self.per_probe.len() <= index {
            self.per_probe.resize_with(index + 1, HashMap::new);
        }
        let map = &mut self.per_probe[index];
        let key = if map.contains_key(self.key.as_str()) || map.len() < MAX_KEYS { self.key.as_str() } else { OTHER };
        if !map.contains_key(key) {
            map.insert(key.to_owned(), T::default());
        }
        map.get_mut(key).expect("inserted")
    }

    /// Probe `index`'s keys, largest `weight` first (then by key), the `--top` ones.
    fn ranked(&self, index: usize, weight: impl Fn(&T) -> u64) -> Vec<(&str, &T)> {
        let Some(map) = self.per_probe.get(index) else { return Vec::new() };
        let mut all: Vec<(&str, &T)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
        all.sort_by(|a, b| weight(b.1).cmp(&weight(a.1)).then_with(|| a.0.cmp(b.0)));
        all.truncate(self.top.unwrap_or(usize::MAX));
        all
    }

    /// ` by comm, tid` for titles.
    fn by_text(&self) -> String {
        let names: Vec<String> = self.by.iter().map(|p| p.title().to_lowercase()).collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" by {}", names.join(", "))
        }
    }
}

fn target(p: &ProbeInfo) -> &str {
    p.spec.split_whitespace().next().unwrap_or_default()
}

/// `--count --by KEYS`: hits per probe and key.
pub struct KeyCounts(Keyed<u64>);

impl KeyCounts {
    /// Counts split by `by`, the `top` largest kept.
    pub fn new(by: Vec<KeyPart>, top: Option<usize>) -> KeyCounts {
        KeyCounts(Keyed::new(by, top))
    }
}

impl Aggregate for KeyCounts {
    fn take(&mut self, e: &Passed<'_>) {
        *self.0.entry(e) += 1;
    }

    fn absorb(&mut self, t: &KeyedTally, probe: &ProbeInfo) {
        *self.0.tallied(t, probe) += t.count;
    }

    fn tables(&self, probes: &[&ProbeInfo]) -> Vec<(String, String)> {
        let mut tables = Vec::new();
        for (i, p) in probes.iter().enumerate() {
            let rows = self.0.ranked(i, |n| *n);
            if rows.is_empty() {
                continue;
            }
            let titles: Vec<String> = self.0.by.iter().map(KeyPart::title).collect();
            let split: Vec<Vec<&str>> = rows.iter().map(|(k, _)| k.split('\t').collect()).collect();
            let widths: Vec<usize> = (0..titles.len())
                .map(|c| {
                    split
                        .iter()
                        .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                        .chain([titles[c].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut table = String::new();
            for (c, t) in titles.iter().enumerate() {
                let _ = write!(table, "{t:<w$} ", w = widths[c]);
            }
            let _ = writeln!(table, "{:>10}", "COUNT");
            for (parts, (_, n)) in split.iter().zip(&rows) {
                for (c, s) in parts.iter().enumerate() {
                    let _ = write!(table, "{s:<w$} ", w = widths.get(c).copied().unwrap_or(0));
                }
                let _ = writeln!(table, "{n:>10}");
            }
            tables.push((format!("hits of {}{}", target(p), self.0.by_text()), table));
        }
        tables
    }
}

/// What a histogram measures.
pub enum Measure {
    /// `--hist NAME`: the fetched value `NAME`.
    Value(String),
    /// `--latency`: call times, in nanoseconds.
    Latency,
}

impl Measure {
    /// The event's measure, if it has one.
    fn of(&self, e: &Passed<'_>) -> Option<i64> {
        match self {
            Measure::Value(field) => {
                let at = e.probe.args.iter().position(|a| &a.name == field);
                at.and_then(|i| e.event.values.get(i)).and_then(|v| v.as_i64())
            }
            Measure::Latency => e.latency.map(|l| l.as_nanos().min(i64::MAX as u128) as i64),
        }
    }

    /// The figures of a key the engine tallied, if they measure this (an engine tallies
    /// fetched values, never call times).
    fn of_tally(&self, t: &KeyedTally, probe: &ProbeInfo) -> Option<i64> {
        match self {
            Measure::Value(field) => t.value.filter(|_| probe.args.iter().any(|a| &a.name == field)),
            Measure::Latency => None,
        }
    }

    /// The title of a probe's histogram: `size of libc:malloc`, `latency of malloc (ns)`.
    fn title(&self, p: &ProbeInfo) -> String {
        match self {
            Measure::Value(field) => format!("{field} of {}", target(p)),
            Measure::Latency => format!("latency of {} (ns)", p.label),
        }
    }
}

/// `--hist NAME` and `--latency`: a histogram of a measure per probe and key.
pub struct Histograms {
    measure: Measure,
    hists: Keyed<Distribution>,
}

impl Histograms {
    /// Histograms of `measure`, split by `by`.
    pub fn new(measure: Measure, by: Vec<KeyPart>, top: Option<usize>) -> Histograms {
        Histograms { measure, hists: Keyed::new(by, top) }
    }
}

impl Aggregate for Histograms {
    fn take(&mut self, e: &Passed<'_>) {
        if let Some(v) = self.measure.of(e) {
            self.hists.entry(e).add(v);
        }
    }

    fn absorb(&mut self, t: &KeyedTally, probe: &ProbeInfo) {
        if let Some(v) = self.measure.of_tally(t, probe) {
            self.hists.tallied(t, probe).add_tallied(v, t.count, t.min, t.max);
        }
    }

    fn tables(&self, probes: &[&ProbeInfo]) -> Vec<(String, String)> {
        self.hists.histograms(probes, |p| self.measure.title(p))
    }
}

impl Keyed<Distribution> {
    /// A table per probe and key, the most filled first: `size of libc:malloc` or, split by
    /// key, `size of libc:malloc [worker-1]`, with `title` naming the probe's histogram.
    fn histograms(&self, probes: &[&ProbeInfo], title: impl Fn(&ProbeInfo) -> String) -> Vec<(String, String)> {
        let mut tables = Vec::new();
        for (i, p) in probes.iter().enumerate() {
            for (key, d) in self.ranked(i, Distribution::count) {
                let title = if self.by.is_empty() { title(p) } else { format!("{} {}", title(p), bracketed(key)) };
                tables.push((title, d.render()));
            }
        }
        tables
    }
}
