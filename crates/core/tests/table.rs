//! Lookups while the table changes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dprobe_core::*;

fn row(key: u64, kind: TrapKind) -> TableEntry<u64> {
    TableEntry { key, kind, site: Arc::new(Site { addr: Addr(key), arch: key * 2, probes: vec![] }) }
}

#[test]
fn lookup_finds_exact_keys_only() {
    let t = SiteTable::new();
    t.change(|rows| rows.extend([row(0x30, TrapKind::Entry), row(0x10, TrapKind::PostStep)]));
    assert_eq!(t.lookup(0x10, |s| s.map(|(s, k)| (s.arch, k))), Some((0x20, TrapKind::PostStep)));
    assert_eq!(t.lookup(0x30, |s| s.map(|(s, k)| (s.arch, k))), Some((0x60, TrapKind::Entry)));
    assert!(t.lookup(0x20, |s| s.is_none()));
}

#[test]
fn concurrent_lookups_see_whole_snapshots() {
    let t = Arc::new(SiteTable::new());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Keys 1 and 2 are always inserted and removed together.
                    let a = t.lookup(1, |s| s.is_some());
                    let b = t.lookup(2, |s| s.map(|(s, _)| s.arch));
                    if let Some(arch) = b {
                        assert_eq!(arch, 4);
                    }
                    let _ = a;
                }
            })
        })
        .collect();
    for i in 0..500 {
        if i % 2 == 0 {
            t.change(|rows| rows.extend([row(1, TrapKind::Entry), row(2, TrapKind::Entry)]));
        } else {
            t.change(|rows| rows.retain(|r| r.key > 2));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}
