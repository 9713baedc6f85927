//! Entry/return pairing for latencies, one rule for every engine: a return that the engine
//! paired itself carries its entry's time; otherwise it takes the latest pending entry of the
//! same probe on the same thread (calls on one thread nest, so the latest entry is the
//! innermost call). Pending entries are bounded: past the limit they are dropped and counted.

use std::collections::HashMap;
use std::time::Duration;

use crate::event::{ProbeEvent, Side};

/// Pending entries, per probe and thread.
#[derive(Debug)]
pub struct Pairing {
    pending: HashMap<(usize, u32), Vec<u64>>,
    count: usize,
    limit: usize,
    /// Entries not kept because `limit` were already pending.
    pub dropped: u64,
}

impl Pairing {
    /// Pairing that keeps at most `limit` pending entries over all threads.
    pub fn new(limit: usize) -> Pairing {
        Pairing { pending: HashMap::new(), count: 0, limit, dropped: 0 }
    }

    /// The most pending entries kept.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Take `event` in: an entry is kept for its return (`None`); a return gives the time
    /// since its entry, when that entry is known.
    pub fn latency(&mut self, event: &ProbeEvent<'_>) -> Option<Duration> {
        match event.side {
            Side::Entry => {
                if self.count < self.limit {
                    self.pending.entry((event.probe, event.tid)).or_default().push(event.time_ns);
                    self.count += 1;
                } else {
                    self.dropped += 1;
                }
                None
            }
            Side::Return => {
                let start = match event.entry_time_ns {
                    Some(t) => t,
                    None => {
                        let key = (event.probe, event.tid);
                        let stack = self.pending.get_mut(&key)?;
                        let t = stack.pop()?;
                        self.count -= 1;
                        if stack.is_empty() {
                            self.pending.remove(&key);
                        }
                        t
                    }
                };
                Some(Duration::from_nanos(event.time_ns.saturating_sub(start)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::Values;

    fn event(values: &Values, side: Side, probe: usize, tid: u32, time_ns: u64) -> ProbeEvent<'_> {
        ProbeEvent {
            probe,
            side,
            pid: 1,
            tid,
            maps_of: 1,
            time_ns,
            entry_time_ns: None,
            comm: b"",
            values,
            user_stack: &[],
            kernel_stack: &[],
        }
    }

    #[test]
    fn returns_pair_with_the_innermost_entry_of_their_thread_and_probe() {
        let v = Values::with_capacity(0);
        let mut p = Pairing::new(3);
        for (probe, tid, t) in [(0, 7, 100), (0, 7, 150), (0, 8, 160), (1, 7, 170)] {
            assert_eq!(p.latency(&event(&v, Side::Entry, probe, tid, t)), None);
        }
        assert_eq!(p.dropped, 1, "the fourth entry is past the limit");
        assert_eq!(p.latency(&event(&v, Side::Return, 0, 7, 200)), Some(Duration::from_nanos(50)), "inner call");
        assert_eq!(p.latency(&event(&v, Side::Return, 0, 8, 200)), Some(Duration::from_nanos(40)), "other thread");
        assert_eq!(p.latency(&event(&v, Side::Return, 0, 7, 300)), Some(Duration::from_nanos(200)), "outer call");
        assert_eq!(p.latency(&event(&v, Side::Return, 0, 7, 400)), None, "no entry left");
        assert_eq!(p.latency(&event(&v, Side::Return, 1, 7, 400)), None, "its entry was dropped");
        let mut paired = event(&v, Side::Return, 5, 9, 1000);
        paired.entry_time_ns = Some(400);
        assert_eq!(p.latency(&paired), Some(Duration::from_nanos(600)), "the engine's own pairing");
    }
}
