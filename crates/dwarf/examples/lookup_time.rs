//! How long finding a function's copies in a library's debug information takes: the C
//! library's by default, read anew each round as one `dprobe trace` reads it (its debug file
//! loaded, its compressed sections inflated, then one pass over its units).
//!
//! `cargo run --release -p dprobe-dwarf --example lookup_time [LIBRARY [FUNCTION]]`

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let library = args.next().unwrap_or_else(|| "/lib/x86_64-linux-gnu/libc.so.6".into());
    let function = args.next().unwrap_or_else(|| "getenv".into());
    for _ in 0..5 {
        let start = Instant::now();
        let Some(info) = dprobe_dwarf::DebugInfo::load(&library).expect("readable") else {
            eprintln!("{library} has no debug information here");
            return;
        };
        let loaded = start.elapsed();
        let found = dprobe_dwarf::find_function(info.dwarf(), &function).expect("readable");
        let copies = found.map_or(0, |f| f.inlined.len());
        println!(
            "loaded in {:.1} ms, {function} found in {:.1} ms more ({copies} inlined copies)",
            loaded.as_secs_f64() * 1e3,
            (start.elapsed() - loaded).as_secs_f64() * 1e3
        );
    }
}
