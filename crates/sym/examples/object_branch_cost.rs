//! What the first jump check in an object costs: its file read again, its function starts
//! gathered (its debug file's too), its code indexed by where its branches could land, and
//! its unwind tables read for exception landing pads (all kept for the file's life after),
//! and the landing pads alone.
//!
//! `cargo run --release -p dprobe-sym --example object_branch_cost -- FILE...`

use std::time::Instant;

use dprobe_sym::{check_object_branches, landing_pads, Symbols};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path)?;
        let t = Instant::now();
        let pads = landing_pads(&data).map(|p| p.len());
        let pads_time = t.elapsed();
        let pads = pads.map_or("unreadable".to_owned(), |n| n.to_string());
        let symbols = Symbols::load_file(&path)?;
        let Some(f) = symbols.functions().iter().find(|f| f.size >= 5) else {
            println!(
                "{path}: no function to check, landing pads {:.1} ms ({pads} pads)",
                pads_time.as_secs_f64() * 1e3
            );
            continue;
        };
        let t = Instant::now();
        let checked = check_object_branches(f, f.start);
        let whole = t.elapsed();
        println!(
            "{path}: first jump check {:.1} ms ({}), landing pads alone {:.1} ms ({pads} pads)",
            whole.as_secs_f64() * 1e3,
            checked.map_or_else(|e| e.to_string(), |()| "allowed".to_owned()),
            pads_time.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
