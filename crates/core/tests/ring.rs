//! The event ring: order, payloads, full-ring drops, and concurrent producers.
use dprobe_core::{EventRing, RingRecord};
use std::sync::Arc;

fn event(probe: u64, payload: &[u8]) -> RingRecord {
    let mut e = RingRecord::default();
    (e.probe, e.kind, e.tid, e.cpu, e.time_ns, e.values) = (probe, 7, 42, 1, 99, [probe; 8]);
    e.set_payload(payload);
    e
}

#[test]
fn records_come_out_in_order_with_their_payload() {
    let ring = EventRing::new(8);
    assert!(ring.push(&event(1, b"/etc/hostname")));
    assert!(ring.push(&event(2, b"")));
    let a = ring.pop().unwrap();
    assert_eq!((a.probe, a.kind, a.tid, a.cpu, a.time_ns, a.values), (1, 7, 42, 1, 99, [1; 8]));
    assert_eq!(a.payload(), b"/etc/hostname");
    assert_eq!(ring.pop().unwrap().payload(), b"");
    assert!(ring.pop().is_none());
}

#[test]
fn long_payloads_are_truncated() {
    let mut e = RingRecord::default();
    assert_eq!(e.set_payload(&[b'x'; 1000]), dprobe_core::PAYLOAD_BYTES);
    let ring = EventRing::new(2);
    ring.push(&e);
    assert_eq!(ring.pop().unwrap().payload().len(), dprobe_core::PAYLOAD_BYTES);
}

#[test]
fn a_full_ring_drops_and_counts() {
    let ring = EventRing::new(4);
    for i in 0..4 {
        assert!(ring.push(&event(i, b"")));
    }
    assert!(!ring.push(&event(9, b"")));
    assert!(!ring.push(&event(9, b"")));
    assert_eq!(ring.dropped(), 2);
    assert_eq!((0..4).map(|_| ring.pop().unwrap().probe).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(ring.push(&event(5, b"")), "room again after draining");
}

#[test]
fn concurrent_producers_lose_nothing_that_was_accepted() {
    let ring = Arc::new(EventRing::new(1024));
    const PER: u64 = 100_000;
    let producers: Vec<_> = (0..4u64)
        .map(|t| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                for i in 0..PER {
                    if ring.push(&event(t << 32 | i, &i.to_le_bytes())) {
                        accepted += 1;
                    }
                }
                accepted
            })
        })
        .collect();
    let mut seen = 0u64;
    let mut last = [None::<u64>; 4];
    let mut e = RingRecord::default();
    let mut done = false;
    while !done {
        done = producers.iter().all(|p| p.is_finished());
        while ring.pop_into(&mut e) {
            let (t, i) = ((e.probe >> 32) as usize, e.probe & 0xffff_ffff);
            assert_eq!(e.payload(), &i.to_le_bytes(), "payload belongs to its record");
            assert!(last[t].is_none_or(|l| l < i), "per-producer order kept");
            last[t] = Some(i);
            seen += 1;
        }
    }
    let accepted: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(seen, accepted);
    assert_eq!(accepted + ring.dropped(), 4 * PER);
}
