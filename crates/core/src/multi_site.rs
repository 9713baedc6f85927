//! One probe at several places: a source line the compiler duplicated, a function with
//! inlined copies. [`MultiSite`] wraps any [`Engine`] and places each place of a probe as one
//! of the engine's own probes; its events and figures come back under the one probe's index,
//! so a tracer counts the probe once, whichever of its places was hit, and every engine gets
//! this for free.
//!
//! This is not a glob (`handle_*`), which makes one probe per function, each with its own
//! line in a summary: a probe with several sites is one thing the user named.

use dprobe_spec::{ProbePoint, ProbeSpec};

use crate::engine::{Ending, Engine, Exit, KeyedTally, LiveTallies, Placed, ProbeRequest};
use crate::event::{EventSink, ProbeEvent};
use crate::stats::{Placement, Stats};

/// The owner of a site whose probe could not be placed whole.
const ORPHAN: usize = usize::MAX;

/// An engine whose probes may each have several sites.
pub struct MultiSite<E> {
    inner: E,
    /// For each of the inner engine's probes, the probe it is a site of.
    owner: Vec<usize>,
    /// For each probe, its sites' indices in the inner engine.
    sites: Vec<Vec<usize>>,
}

impl<E: Engine> MultiSite<E> {
    /// Wrap `inner`.
    pub fn new(inner: E) -> Self {
        MultiSite { inner, owner: Vec::new(), sites: Vec::new() }
    }

    /// Place one probe at each of `sites` (targets that replace the spec's own; none: the
    /// spec's target alone). The notes of its sites are said once each. When a site cannot
    /// be placed, the probe is not counted (the next one takes its index, as with any engine)
    /// and the sites placed so far deliver nothing.
    pub fn place_sites(&mut self, probe: ProbeRequest<'_>, sites: &[ProbePoint]) -> Result<Placed, E::Error> {
        let index = self.sites.len();
        self.sites.push(Vec::new());
        let placed = self.place_all(index, probe, sites);
        if placed.is_err() {
            self.orphan_last();
        }
        placed
    }

    /// The last probe is not counted (a site of it failed): its sites deliver nothing.
    fn orphan_last(&mut self) {
        for inner in self.sites.pop().unwrap_or_default() {
            self.owner[inner] = ORPHAN;
        }
    }

    /// The inner engine's next probe is a site of probe `index`.
    fn add_site(&mut self, index: usize) {
        self.sites[index].push(self.owner.len());
        self.owner.push(index);
    }

    fn place_all(&mut self, index: usize, probe: ProbeRequest<'_>, sites: &[ProbePoint]) -> Result<Placed, E::Error> {
        if sites.is_empty() {
            return self.place_one(index, probe);
        }
        let mut all = Vec::with_capacity(sites.len());
        for spec in site_specs(probe, sites) {
            all.push(self.place_one(index, ProbeRequest { spec: &spec, ..probe })?);
        }
        Ok(merged(all))
    }

    /// Place several probes, each at its sites, as [`MultiSite::place_sites`] would one after
    /// the other, with one call of the engine's [`Engine::place_many`] for all their sites. A
    /// probe one of whose sites cannot be placed is not counted, as there; its other sites are
    /// placed all the same, and deliver nothing.
    pub fn place_sites_many(&mut self, probes: &[(ProbeRequest<'_>, &[ProbePoint])]) -> Vec<Result<Placed, E::Error>> {
        let specs: Vec<Vec<ProbeSpec>> = probes.iter().map(|(probe, sites)| site_specs(*probe, sites)).collect();
        let mut requests = Vec::new();
        for ((probe, _), specs) in probes.iter().zip(&specs) {
            match specs.is_empty() {
                true => requests.push(*probe),
                false => requests.extend(specs.iter().map(|spec| ProbeRequest { spec, ..*probe })),
            }
        }
        let mut answers = self.inner.place_many(requests).into_iter();
        let mut out = Vec::with_capacity(probes.len());
        for specs in &specs {
            let index = self.sites.len();
            self.sites.push(Vec::new());
            let (mut all, mut failed) = (Vec::new(), None);
            for _ in 0..specs.len().max(1) {
                match answers.next().expect("one answer for each site") {
                    Ok(one) => {
                        self.add_site(index);
                        all.push(one);
                    }
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            out.push(match failed {
                None if specs.is_empty() => Ok(all.pop().unwrap_or_default()),
                None => Ok(merged(all)),
                Some(e) => {
                    self.orphan_last();
                    Err(e)
                }
            });
        }
        out
    }

    fn place_one(&mut self, index: usize, probe: ProbeRequest<'_>) -> Result<Placed, E::Error> {
        let placed = self.inner.place(probe)?;
        self.add_site(index);
        Ok(placed)
    }

    /// How many sites probe `index` has.
    pub fn site_count(&self, index: usize) -> usize {
        self.sites.get(index).map_or(0, Vec::len)
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

/// The spec of each of `sites`: the probe's, at the site (none: the probe has its own place).
fn site_specs(probe: ProbeRequest<'_>, sites: &[ProbePoint]) -> Vec<ProbeSpec> {
    let at = |site: &ProbePoint| ProbeSpec { point: site.clone(), ..probe.spec.clone() };
    sites.iter().map(at).collect()
}

/// What placing a probe's sites told, as one probe's: the first fields given, each note and
/// detail once.
fn merged(all: Vec<Placed>) -> Placed {
    let mut placed = Placed::default();
    let (mut notes, mut details): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for one in all {
        placed.fields = placed.fields.or(one.fields);
        if let Some(n) = one.note.filter(|n| !notes.contains(n)) {
            notes.push(n);
        }
        if let Some(d) = one.detail.filter(|d| !details.contains(d)) {
            details.push(d);
        }
    }
    placed.note = (!notes.is_empty()).then(|| notes.join("; "));
    placed.detail = (!details.is_empty()).then(|| details.join("; "));
    placed
}

/// The figures of a probe's sites together: their counts summed; placed where its first site
/// is, unless a site failed or waits for its library.
pub fn merge_stats(all: impl IntoIterator<Item = Stats>) -> Stats {
    let mut total: Option<Stats> = None;
    for s in all {
        let Some(t) = total.as_mut() else {
            total = Some(s);
            continue;
        };
        t.hits += s.hits;
        t.returns += s.returns;
        t.missed += s.missed;
        t.reentered += s.reentered;
        t.abandoned += s.abandoned;
        t.lost += s.lost;
        t.handler_panics += s.handler_panics;
        t.handler_faults += s.handler_faults;
        let worse = match (&t.placement, &s.placement) {
            (Placement::Failed(_), _) => false,
            (_, Placement::Failed(_)) => true,
            (Placement::Waiting, _) => false,
            (_, Placement::Waiting) => true,
            _ => false,
        };
        if worse {
            t.placement = s.placement;
        }
    }
    total.unwrap_or_default()
}

impl<E: Engine> Engine for MultiSite<E> {
    type Error = E::Error;

    fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, E::Error> {
        self.place_sites(probe, &[])
    }

    fn prefilter(&mut self, filter: &dprobe_spec::Filter, text: &str) {
        self.inner.prefilter(filter, text);
    }

    fn stacks(&mut self, want: crate::StackRequest) -> Result<(), String> {
        self.inner.stacks(want)
    }

    fn run(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, E::Error> {
        let owner = &self.owner;
        self.inner.run(stop, &mut |event| match owner.get(event.probe).copied().unwrap_or(event.probe) {
            ORPHAN => {}
            probe => sink(&ProbeEvent { probe, ..*event }),
        })
    }

    fn stats(&self, index: usize) -> Stats {
        let sites = self.sites.get(index).map(Vec::as_slice).unwrap_or_default();
        merge_stats(sites.iter().map(|&i| self.inner.stats(i)))
    }

    fn remarks(&self, index: usize) -> Vec<String> {
        let mut remarks: Vec<String> = Vec::new();
        for &i in self.sites.get(index).map(Vec::as_slice).unwrap_or_default() {
            for r in self.inner.remarks(i) {
                if !remarks.contains(&r) {
                    remarks.push(r);
                }
            }
        }
        remarks
    }

    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }

    /// The sites' figures under their probe's index.
    fn tallies(&self) -> Vec<KeyedTally> {
        owned(&self.owner, self.inner.tallies())
    }

    fn live_tallies(&self) -> Option<LiveTallies> {
        let inner = self.inner.live_tallies()?;
        let owner = self.owner.clone();
        Some(Box::new(move || owned(&owner, inner())))
    }

    fn finish_notes(&self) -> crate::FinishNotes {
        self.inner.finish_notes()
    }

    fn finish(self, wait: Option<crate::WaitForProgram>, give_up: &dyn Fn() -> bool) -> Result<Option<Exit>, E::Error> {
        self.inner.finish(wait, give_up)
    }

    fn abandon(self) {
        self.inner.abandon();
    }
}

/// The sites' figures `all` under their probe's index (`owner`), those of orphans left out.
fn owned(owner: &[usize], mut all: Vec<KeyedTally>) -> Vec<KeyedTally> {
    all.retain_mut(|t| match owner.get(t.probe).copied() {
        Some(ORPHAN) | None => false,
        Some(probe) => {
            t.probe = probe;
            true
        }
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{FetchPlan, Values};
    use crate::Side;
    use dprobe_spec::{parse_point, parse_probe};

    /// An engine that records what it was asked to place and hits each of its probes
    /// `index + 1` times.
    #[derive(Default)]
    struct Recorder {
        placed: Vec<ProbePoint>,
    }

    impl Engine for Recorder {
        type Error = std::io::Error;

        fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, Self::Error> {
            if matches!(&probe.spec.point, ProbePoint::User { function, .. } if function == "bad") {
                return Err(std::io::Error::other("refused"));
            }
            self.placed.push(probe.spec.point.clone());
            Ok(Placed { fields: None, note: Some("waiting".into()), detail: None })
        }

        fn run(&mut self, _stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, Self::Error> {
            let values = Values::with_capacity(0);
            for probe in 0..self.placed.len() {
                for _ in 0..=probe {
                    let e = ProbeEvent {
                        probe,
                        side: Side::Entry,
                        pid: 1,
                        tid: 1,
                        maps_of: 1,
                        time_ns: 0,
                        entry_time_ns: None,
                        comm: b"",
                        values: &values,
                        user_stack: &[],
                        kernel_stack: &[],
                    };
                    sink(&e);
                }
            }
            Ok(Ending::Exited(Exit::Code(0)))
        }

        fn stats(&self, index: usize) -> Stats {
            let placement = if index == 2 { Placement::Waiting } else { Placement::At(crate::Addr(index as u64)) };
            Stats { hits: index as u64 + 1, placement, ..Stats::default() }
        }

        fn remarks(&self, _index: usize) -> Vec<String> {
            vec!["same remark".into()]
        }

        fn finish(self, _: Option<crate::WaitForProgram>, _: &dyn Fn() -> bool) -> Result<Option<Exit>, Self::Error> {
            Ok(None)
        }

        fn abandon(self) {}
    }

    #[test]
    fn a_probe_with_three_sites_counts_as_one() {
        let mut engine = MultiSite::new(Recorder::default());
        let one = parse_probe("app:main").unwrap();
        let three = parse_probe("app:scale").unwrap();
        let plan = FetchPlan::compile(&[], None);
        let request = |spec| ProbeRequest { spec, plan: &plan, timed: false, maxactive: None, semaphore: None };
        engine.place(request(&one)).unwrap();
        let sites: Vec<ProbePoint> = ["app:scale", "app:0x1150", "app:0x1190"].map(|t| parse_point(t).unwrap()).into();
        let placed = engine.place_sites(request(&three), &sites).unwrap();
        assert_eq!(placed.note.as_deref(), Some("waiting"), "one note for three sites");
        assert_eq!(engine.inner().placed[1..], sites[..]);
        assert_eq!((engine.site_count(0), engine.site_count(1)), (1, 3));
        let mut seen = [0u64; 2];
        engine.run(&mut || false, &mut |e| seen[e.probe] += 1).unwrap();
        // Sites 1, 2, 3 of the inner engine hit 2 + 3 + 4 times.
        assert_eq!(seen, [1, 9]);
        let stats = engine.stats(1);
        assert_eq!(stats.hits, 9);
        assert_eq!(stats.placement, Placement::Waiting, "a site waiting for its library shows");
        assert_eq!(engine.stats(0).placement, Placement::At(crate::Addr(0)));
        assert_eq!(engine.remarks(1), vec!["same remark".to_owned()]);
    }

    #[test]
    fn a_site_that_cannot_be_placed_fails_the_probe() {
        let mut engine = MultiSite::new(Recorder::default());
        let spec = parse_probe("app:scale").unwrap();
        let plan = FetchPlan::compile(&[], None);
        let sites = [parse_point("app:0x10").unwrap(), parse_point("app:bad").unwrap()];
        let request = ProbeRequest { spec: &spec, plan: &plan, timed: false, maxactive: None, semaphore: None };
        assert!(engine.place_sites(request, &sites).is_err());
        // The next probe takes index 0, and the site placed before the failure is silent.
        let main = parse_probe("app:main").unwrap();
        let request = ProbeRequest { spec: &main, plan: &plan, timed: false, maxactive: None, semaphore: None };
        engine.place(request).unwrap();
        assert_eq!((engine.site_count(0), engine.site_count(1)), (1, 0));
        let mut seen = Vec::new();
        engine.run(&mut || false, &mut |e| seen.push(e.probe)).unwrap();
        // The inner engine's probe 1 (app:main) hits twice; its probe 0 (the orphan) once.
        assert_eq!(seen, [0, 0]);
    }

    #[test]
    fn probes_placed_together_are_numbered_as_placed_one_by_one() {
        let mut engine = MultiSite::new(Recorder::default());
        let plan = FetchPlan::compile(&[], None);
        let [main, scale, bad, step] =
            ["app:main", "app:scale", "app:bad", "app:step"].map(|s| parse_probe(s).unwrap());
        let request = |spec| ProbeRequest { spec, plan: &plan, timed: false, maxactive: None, semaphore: None };
        let scale_sites: Vec<ProbePoint> = ["app:scale", "app:0x1150"].map(|t| parse_point(t).unwrap()).into();
        let broken_sites: Vec<ProbePoint> = ["app:0x10", "app:bad", "app:0x20"].map(|t| parse_point(t).unwrap()).into();
        let answers = engine.place_sites_many(&[
            (request(&main), &[]),
            (request(&scale), &scale_sites),
            (request(&bad), &[]),
            (request(&scale), &broken_sites),
            (request(&step), &[]),
        ]);
        let ok: Vec<bool> = answers.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, false, false, true]);
        assert_eq!(answers[1].as_ref().unwrap().note.as_deref(), Some("waiting"), "one note for two sites");
        // main, scale (2 sites) and step took indices 0, 1 and 2; the broken probe's two
        // placed sites (inner 3 and 4) are orphans.
        assert_eq!((engine.site_count(0), engine.site_count(1), engine.site_count(2)), (1, 2, 1));
        let mut seen = [0u64; 3];
        engine.run(&mut || false, &mut |e| seen[e.probe] += 1).unwrap();
        // The inner probes hit 1, 2 + 3, (4 + 5 orphaned), 6 times.
        assert_eq!(seen, [1, 5, 6]);
    }
}
