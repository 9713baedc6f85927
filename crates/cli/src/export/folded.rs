//! `--folded`: every event's stack counted, written at the end as folded stacks
//! (`main;run;leaf 42`, root first, one line per distinct stack), the input of
//! `flamegraph.pl`, `inferno-flamegraph` and speedscope.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::Export;
use crate::clock::Clock;
use crate::sinks::Passed;
use crate::stacks::folded;

/// The counts per folded stack, and where they go.
pub struct Folded {
    /// A file, or standard output (`None`).
    path: Option<PathBuf>,
    counts: HashMap<String, u64>,
    line: String,
}

impl Folded {
    /// Folded stacks written to `path` (`-`: standard output) at the end (checked before
    /// the trace starts: `output_files.rs`).
    pub fn new(path: &str) -> Folded {
        let path = (path != "-").then(|| PathBuf::from(path));
        Folded { path, counts: HashMap::new(), line: String::new() }
    }

    /// The lines, most frequent first (then by stack, for a stable order).
    fn text(&self) -> String {
        let mut stacks: Vec<(&String, &u64)> = self.counts.iter().collect();
        stacks.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        stacks.iter().map(|(s, n)| format!("{s} {n}\n")).collect()
    }
}

impl Export for Folded {
    fn take(&mut self, e: &Passed<'_>) {
        if e.stack.is_empty() {
            return;
        }
        folded(e.stack, &mut self.line);
        match self.counts.get_mut(&self.line) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(self.line.clone(), 1);
            }
        }
    }

    fn finish(&mut self, _clock: &Clock) -> Result<()> {
        let text = self.text();
        match &self.path {
            Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display())),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("cannot write the folded stacks")
            }
        }
    }
}
