//! What the kernel engine reports, in words.

use std::io;

/// Why the kernel engine cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A feature this kernel or this engine does not have.
    #[error("{what}: {why}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// Why it cannot be done, and what would work.
        why: String,
    },
    /// A binary, library, function or event that does not exist.
    #[error("{what}: {why}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// Where it was looked for.
        why: String,
    },
    /// The kernel refused a definition or a filter; its own message from `error_log`.
    #[error("the kernel refused `{definition}`: {reason}")]
    Refused {
        /// What was written.
        definition: String,
        /// The kernel's explanation (`error_log`), or the errno.
        reason: String,
    },
    /// Tracing needs privileges dprobe does not have.
    #[error("{0}")]
    Permission(String),
    /// Another failure of a system call.
    #[error("{what}: {error}")]
    Os {
        /// What was being done.
        what: String,
        /// The error (in the message, not its source: a chain of sources would say it twice).
        error: io::Error,
    },
}

impl KernelError {
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> KernelError {
        KernelError::Os { what: what.into(), error: source }
    }
}
