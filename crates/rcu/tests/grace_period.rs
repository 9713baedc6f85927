//! A writer never frees a snapshot a reader still sees.
use dprobe_rcu::Rcu;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A value that records whether it has been dropped: a reader seeing `dead == true` would be a
/// use after free.
struct Canary {
    generation: u64,
    dead: Arc<AtomicBool>,
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

#[test]
fn readers_never_see_a_retired_snapshot() {
    let cell = Arc::new(Rcu::new(Canary { generation: 0, dead: Arc::new(AtomicBool::new(false)) }));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cell, stop, reads) = (cell.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    cell.read(|c| {
                        assert!(!c.dead.load(Ordering::SeqCst), "read a retired snapshot");
                        assert!(c.generation >= last, "generations went backwards");
                        last = c.generation;
                        std::hint::spin_loop();
                        assert!(!c.dead.load(Ordering::SeqCst), "snapshot retired during a read");
                    });
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Replace until the readers have really overlapped with the writer, however the
    // scheduler treats them: at least 2000 generations and 10,000 reads.
    let mut generation = 0;
    while generation < 2000 || reads.load(Ordering::Relaxed) < 10_000 {
        generation += 1;
        let old = cell.replace(Canary { generation, dead: Arc::new(AtomicBool::new(false)) });
        assert_eq!(old.generation, generation - 1);
        if generation % 256 == 0 {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) >= 10_000);
    assert_eq!(cell.read(|c| c.generation), generation);
}

#[test]
fn replace_waits_for_a_reader_in_progress() {
    let cell = Arc::new(Rcu::new(1u32));
    let entered = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cell, entered, released) = (cell.clone(), entered.clone(), released.clone());
        std::thread::spawn(move || {
            cell.read(|_| {
                entered.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(100));
                released.store(true, Ordering::SeqCst);
            })
        })
    };
    while !entered.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    cell.replace(2);
    assert!(released.load(Ordering::SeqCst), "replace returned while a reader still held the old snapshot");
    reader.join().unwrap();
}

#[test]
fn update_sees_current_value() {
    let cell = Rcu::new(vec![1]);
    let old = cell.update(|v| v.iter().chain([&2]).copied().collect());
    assert_eq!(old, vec![1]);
    assert_eq!(cell.read(|v| v.clone()), vec![1, 2]);
}

/// A grace period kept outside the cell: one reader thread's section counter, odd while it is
/// inside (what dprobe's jump path keeps per thread).
static SECTION: AtomicU64 = AtomicU64::new(0);
/// The generation the reader holds, plus one; 0 when it holds none.
static HOLDING: AtomicU64 = AtomicU64::new(0);

fn section_grace() {
    let seen = SECTION.load(Ordering::SeqCst);
    if seen % 2 == 1 {
        while SECTION.load(Ordering::SeqCst) == seen {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_writer_waits_for_readers_of_the_outer_grace_period() {
    let cell = Arc::new(Rcu::with_grace(0u64, section_grace));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (cell, stop, reads) = (cell.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                SECTION.fetch_add(1, Ordering::SeqCst);
                // SAFETY: inside the section `section_grace` waits for, from before the read
                // until after it.
                unsafe {
                    cell.read_in_section(|generation| {
                        HOLDING.store(generation + 1, Ordering::SeqCst);
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                        HOLDING.store(0, Ordering::SeqCst);
                    })
                };
                SECTION.fetch_add(1, Ordering::SeqCst);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut generation = 0;
    while generation < 2000 || reads.load(Ordering::Relaxed) < 10_000 {
        generation += 1;
        let old = cell.replace(generation);
        assert_eq!(old, generation - 1);
        assert_ne!(HOLDING.load(Ordering::SeqCst), old + 1, "replace returned while a reader held the old snapshot");
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    // The announced reads see the same cell.
    assert_eq!(cell.read(|g| *g), generation);
}
