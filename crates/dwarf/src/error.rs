//! What can go wrong reading DWARF.

use std::path::PathBuf;

/// An error reading a binary or its debug information.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not its source: a chain of sources would say it twice).
        error: std::io::Error,
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

/// Why a variable cannot be fetched by name.
#[derive(Debug, thiserror::Error)]
pub enum VarError {
    /// The DWARF has no function of that name with code.
    #[error("no function `{name}` in the DWARF (not compiled with -g, inlined everywhere, or misspelled)")]
    NoFunction {
        /// The name asked for.
        name: String,
    },
    /// No variable of that name is in scope.
    #[error("no variable `{name}` in {function} here; known: {}", if known.is_empty() { "none".into() } else { known.join(", ") })]
    UnknownVariable {
        /// The name asked for.
        name: String,
        /// The function.
        function: String,
        /// The variables in scope there.
        known: Vec<String>,
    },
    /// The variable has no location at the probe's address.
    #[error("`{name}` is optimized out here{}", available.as_ref().map(|a| format!("; available at {a}")).unwrap_or_else(|| "; it has no location anywhere".into()))]
    OptimizedOut {
        /// The variable.
        name: String,
        /// Where it has one (`lines 40-52`, or addresses).
        available: Option<String>,
    },
    /// A struct or union has no such member.
    #[error("`{path}`: {type_name} has no member `{member}`; its members: {}", known.join(", "))]
    NoMember {
        /// The whole path.
        path: String,
        /// The member asked for.
        member: String,
        /// The struct's type.
        type_name: String,
        /// Its members.
        known: Vec<String>,
    },
    /// The path is not `NAME(->MEMBER|.MEMBER|[N])*`.
    #[error("`{path}`: expected {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What was expected.
        reason: String,
    },
    /// The value exists but dprobe cannot fetch it.
    #[error("`{path}` cannot be fetched: {reason}")]
    Unfetchable {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The DWARF says something impossible.
    #[error("malformed DWARF: {0}")]
    Malformed(&'static str),
    /// gimli refused the DWARF.
    #[error("malformed DWARF: {0}")]
    Gimli(#[from] gimli::Error),
}
