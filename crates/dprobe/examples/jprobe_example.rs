//! The article's second example, in user space: a typed entry probe (jprobe) on the C
//! library's `open` and `openat`, printing each call's arguments.
//!
//! The handler receives `(path, flags, mode)` as typed values and copies the path with a
//! non-faulting read (what the article's `copy_from_user`, which may sleep, should have been)
//! into an event for the main thread to print.
//!
//! Run: `cargo run --release --example jprobe_example`

mod common;

use std::sync::OnceLock;

use common::{register_thread_name, thread_name};
use dprobe::inproc::{emit, read_c_string, register_jprobe, EventRing, Kprobe, RingRecord, PAYLOAD_BYTES};

static RING: OnceLock<EventRing> = OnceLock::new();

/// Record one call: which function, flags, mode, and the path.
fn record(function: u32, path: *const u8, flags: i32, mode: u32) {
    let Some(ring) = RING.get() else { return };
    let mut event = RingRecord::default();
    let mut buf = [0u8; PAYLOAD_BYTES];
    let path = read_c_string(path as u64, &mut buf).unwrap_or(b"<unreadable>");
    event.set_payload(path);
    event.values[0] = flags as u32 as u64;
    event.values[1] = u64::from(mode);
    emit(ring, dprobe::ProbeId(0), function, &mut event);
}

const OPEN: u32 = 0;
const OPENAT: u32 = 1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    RING.get_or_init(|| EventRing::new(1024));
    register_thread_name("main");
    let open = register_jprobe(Kprobe::symbol("libc:open64"), |(path, flags, mode): (*const u8, i32, u32), _| {
        record(OPEN, path, flags, mode)
    })?;
    let openat = register_jprobe(
        Kprobe::symbol("libc:openat"),
        |(_dirfd, path, flags, mode): (i32, *const u8, i32, u32), _| record(OPENAT, path, flags, mode),
    )?;
    println!("Planted jprobes at {} (open) and {} (openat)", open.addr(), openat.addr());

    // The workload: two threads open files the way programs do.
    let workers: Vec<_> = ["reader", "prober"]
        .into_iter()
        .map(|name| {
            std::thread::Builder::new().name(name.into()).spawn(move || {
                register_thread_name(name);
                for path in ["/etc/hostname", "/etc/passwd", "/no/such/file"] {
                    let _ = std::fs::File::open(path);
                }
                let c_path = c"/etc/os-release";
                // SAFETY: a valid C string; the descriptor is closed right away.
                unsafe {
                    let fd = libc::openat(libc::AT_FDCWD, c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            })
        })
        .collect::<Result<_, _>>()?;
    for w in workers {
        w.join().expect("worker");
    }
    let ring = RING.get().expect("ring");
    while let Some(e) = ring.pop() {
        let name = if e.kind == OPEN { "open" } else { "openat" };
        let path = String::from_utf8_lossy(e.payload());
        println!("thread '{}' call {name}('{path}', {:#o}, {:#o})", thread_name(e.tid), e.values[0], e.values[1]);
    }
    let (open, openat) = (open.unregister()?, openat.unregister()?);
    println!("open was called {} times, openat {} times; {} records dropped", open.hits, openat.hits, ring.dropped());
    Ok(())
}
