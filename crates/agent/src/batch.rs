//! Many probes placed together ([`Message::PlaceMany`]): one change of the program's code for
//! all the entry probes it can take at once, where one at a time each read the process's maps
//! again (a few hundred microseconds each, and longer with every page dprobe patched: 2,200
//! probes on the C library took about 4 s).
//!
//! Taken together: entry probes (not timed, no semaphore) on the program, the C library or the
//! loader, which are never unloaded. The others (return probes, probes on libraries the program
//! may unload, whose placing follows the loader) are placed one at a time, in their order, as
//! [`Message::Place`] places them. A probe takes the next index when it is placed or waits for
//! its library, none when it is refused: the tracer numbers them the same way as it reads the
//! answers.
//!
//! [`Message::PlaceMany`]: crate::wire::Message::PlaceMany
//! [`Message::Place`]: crate::wire::Message::Place

use std::collections::HashMap;
use std::sync::Arc;

use dprobe_core::Kprobe;
use dprobe_spec::ProbeKind;

use crate::child::Live;
use crate::follow;
use crate::inside::{
    entry_placed, entry_probe, hold_off_last, index_refused, never_unloaded, new_hit, object_of, place_asked, refused,
    Answer,
};
use crate::shm::Shm;
use crate::wire::{PlaceProbe, Placement};

/// Place `probes` in session `l`, in order: their answers, in the same order.
pub(crate) fn place_many(l: &mut Live, probes: Vec<PlaceProbe>, shm: &Arc<Shm>) -> Vec<Answer> {
    let mut next = probes.first().map_or(0, |p| p.index);
    let mut answers = Vec::with_capacity(probes.len());
    let mut run = Vec::new();
    let mut never_unloaded = Objects::default();
    for mut p in probes {
        if together(&p, &mut never_unloaded) {
            run.push(p);
            continue;
        }
        place_run(l, std::mem::take(&mut run), &mut next, shm, &mut answers);
        p.index = next;
        answers.push(one(l, p, &mut next, shm));
    }
    place_run(l, run, &mut next, shm, &mut answers);
    answers
}

/// Place `p` alone (with the index `next`), counting the index it takes.
fn one(l: &mut Live, mut p: PlaceProbe, next: &mut u32, shm: &Arc<Shm>) -> Answer {
    p.index = *next;
    let answer = place_asked(l, p, shm);
    if answer.took_index() {
        *next += 1;
    }
    answer
}

/// Whether `p` can be placed with others: an entry probe on an object never unloaded.
fn together(p: &PlaceProbe, never_unloaded: &mut Objects) -> bool {
    p.kind == ProbeKind::Entry
        && !p.timed
        && p.semaphore.is_none()
        && object_of(p).is_none_or(|object| never_unloaded.check(object))
}

/// Whether each object named so far is never unloaded, asked once each.
#[derive(Default)]
struct Objects(HashMap<String, bool>);

impl Objects {
    fn check(&mut self, object: &str) -> bool {
        *self.0.entry(object.to_owned()).or_insert_with(|| never_unloaded(object))
    }
}

/// Place the entry probes of `run` together, from index `next`; their answers go to
/// `answers`. Where they cannot be (the process's maps unreadable, a change of the code that
/// failed), each is placed alone instead.
fn place_run(l: &mut Live, run: Vec<PlaceProbe>, next: &mut u32, shm: &Arc<Shm>, answers: &mut Vec<Answer>) {
    if run.is_empty() {
        return;
    }
    // Loads followed from the first placing on, as for a probe placed alone.
    let _ = follow::start(shm);
    let names: Vec<Kprobe> = run.iter().map(|p| Kprobe::symbol_offset(&p.target, p.offset)).collect();
    let Ok(found) = dprobe_inproc::resolve_each(&names) else {
        answers.extend(run.into_iter().map(|p| one(l, p, next, shm)));
        return;
    };
    // Each probe that can go takes the next index; the others are refused with the reason.
    let first = *next;
    let mut placing = Vec::new();
    let mut refusals: Vec<Option<Placement>> = Vec::with_capacity(run.len());
    for (p, target) in run.iter().zip(found) {
        let index = first + placing.len() as u32;
        let refusal = match target {
            Err(e) => Some(refused(p, e)),
            Ok(_) => index_refused(index as usize, &l.placed).map(Placement::Failed),
        };
        if refusal.is_none() {
            let mut p = p.clone();
            p.index = index;
            let hit = new_hit(&p, shm);
            placing.push((entry_probe(&p, hit.clone()), p.index, hit));
        }
        refusals.push(refusal);
    }
    // An object that went (or is not mapped yet) makes its probes wait for it, which only a
    // probe placed alone does; nothing of the run is placed yet.
    if refusals.iter().any(|r| matches!(r, Some(Placement::Waiting))) {
        answers.extend(run.into_iter().map(|p| one(l, p, next, shm)));
        return;
    }
    let (probes, kept): (Vec<Kprobe>, Vec<(u32, _)>) = placing.into_iter().map(|(k, i, h)| (k, (i, h))).unzip();
    let Ok(registered) = dprobe_inproc::register_all(probes) else {
        // Nothing of the run was placed: each alone, from the same index.
        answers.extend(run.into_iter().map(|p| one(l, p, next, shm)));
        return;
    };
    let mut placed = registered.into_iter().zip(kept);
    for refusal in refusals {
        let answer = match refusal {
            Some(placement) => Answer { note: None, detail: None, placement },
            None => {
                let (probe, (index, hit)) = placed.next().expect("one registered probe for each not refused");
                let (mut note, mut detail) = (None, None);
                hit.placed_at(probe.addr().0);
                let placement = entry_placed(probe, index as usize, hit, &mut l.placed, &mut note, &mut detail);
                hold_off_last(l, index);
                *next += 1;
                Answer { note, detail, placement }
            }
        };
        answers.push(answer);
    }
}
