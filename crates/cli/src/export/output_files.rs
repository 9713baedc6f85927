//! The exports' files, checked together before any is written: a path that cannot be written
//! is refused before the program runs, with no other output file changed yet (an existing one
//! keeps its content until the trace starts), and a file made for a trace that is refused
//! after all is taken away again: a refused command leaves no empty file behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The files checked, and which of them the check made.
#[derive(Default)]
pub struct OutputFiles {
    made: Vec<PathBuf>,
}

impl OutputFiles {
    /// Check that the file `option` names (if it names one) can be written: opened for
    /// writing, made if it is not there, its content left as it is.
    pub fn check(&mut self, option: &str, path: Option<&Path>) -> Result<()> {
        let Some(path) = path else { return Ok(()) };
        let there = std::fs::symlink_metadata(path).is_ok();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("{option}: cannot write {}", path.display()))?;
        if !there {
            self.made.push(path.to_owned());
        }
        Ok(())
    }

    /// Check that the file `option` names can be replaced whole: a file written to
    /// [`temporary_beside`] it and renamed over it. Its own path is not opened, so that a
    /// reader never finds it empty: it is there with its earlier content or, once written,
    /// whole. A file written there later for a trace refused after all is taken away.
    pub fn check_replaced(&mut self, option: &str, path: &Path) -> Result<()> {
        let cannot = || format!("{option}: cannot write {}", path.display());
        let there = std::fs::symlink_metadata(path).is_ok();
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(anyhow::anyhow!("it is a directory")).with_context(cannot);
        }
        let temporary = temporary_beside(path);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .and_then(|_| std::fs::remove_file(&temporary))
            .with_context(cannot)?;
        if !there {
            self.made.push(path.to_owned());
        }
        Ok(())
    }

    /// The trace starts: the files made are its outputs, kept whatever comes.
    pub fn keep(mut self) {
        self.made.clear();
    }
}

/// The name a file replaced whole is written to first: hidden, beside it (a rename does not
/// cross file systems), and this process's own.
pub fn temporary_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

impl Drop for OutputFiles {
    fn drop(&mut self) {
        for path in &self.made {
            let _ = std::fs::remove_file(path);
        }
    }
}
