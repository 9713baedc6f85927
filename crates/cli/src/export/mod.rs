//! Exports: files that other tools read, fed every event that passed its probe's filter
//! beside the lines and the aggregates. A timeline (`--trace-file`: Perfetto's protobuf
//! trace or Chrome's trace-event JSON), metrics (`--metrics`: OpenMetrics text) and folded
//! stacks (`--folded`).

pub mod chrome;
pub mod folded;
pub mod metrics;
pub mod output_files;
pub mod perfetto;
pub mod perfetto_proto;
pub mod timeline;

use std::path::Path;

use anyhow::{bail, Result};

use dprobe_core::KeyedTally;

use crate::clock::Clock;
use crate::output::ProbeInfo;
use crate::sinks::Passed;

/// A file written from the events.
pub trait Export {
    /// Take one event that passed its probe's filter.
    fn take(&mut self, e: &Passed<'_>);
    /// Now and then while tracing (the driver's own pace): a periodic export rewrites its file.
    fn tick(&mut self, _clock: &Clock) {}
    /// Whether the next [`Export::tick`] rewrites the file, and wants the figures the engine
    /// aggregated itself first.
    fn due(&self) -> bool {
        false
    }
    /// Every key's figures the engine aggregated itself so far (they replace the last ones).
    fn tallied(&mut self, _tallies: &[KeyedTally]) {}
    /// The trace is over: complete the file. The first error met writing it, with the file's
    /// name.
    fn finish(&mut self, clock: &Clock) -> Result<()>;
}

/// `--trace-file FILE`: Perfetto's format for `.pftrace` (or `.perfetto-trace`), Chrome's
/// trace-event JSON for `.json`.
pub fn trace_file(path: &Path, probes: &[ProbeInfo], count: bool) -> Result<Box<dyn Export + Send>> {
    let name = path.to_string_lossy();
    let file = || std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()));
    if name.ends_with(".pftrace") || name.ends_with(".perfetto-trace") {
        let writer = perfetto::Perfetto::new(std::io::BufWriter::new(file()?));
        Ok(Box::new(timeline::Timeline::new(writer, path, probes, count)))
    } else if name.ends_with(".json") {
        let writer = chrome::Chrome::new(std::io::BufWriter::new(file()?))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(Box::new(timeline::Timeline::new(writer, path, probes, count)))
    } else {
        bail!("--trace-file {name}: name it FILE.pftrace (Perfetto) or FILE.json (Chrome trace events)")
    }
}
