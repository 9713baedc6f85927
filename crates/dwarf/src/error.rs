//! What can go wrong reading DWARF.

use std::path::PathBuf;

/// An error reading a binary or its debug information.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not ELF, or its DWARF is malformed.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// gimli refused the DWARF.
    #[error("malformed DWARF: {0}")]
    Gimli(#[from] gimli::Error),
}
