//! Typed errors of probe registration, shared by the engines.

use dprobe_arch::{Addr, AnalyzeError, PrepareError};
use dprobe_sym::ResolveError;

/// Why a probe could not be registered (or unregistered). Nothing was patched when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The target does not name code that can be found: its text does not parse, its
    /// binary does not exist or is not loaded, no symbol has its name, its offset is past
    /// the function's end, or it is not in user space.
    #[error(transparent)]
    Target(ResolveError),
    /// The address is not executable code of a loaded object.
    #[error("{addr} is not probe-able code: {reason}")]
    InvalidAddress {
        /// The address.
        addr: Addr,
        /// Why (unmapped, not executable, ...).
        reason: String,
    },
    /// Decoding or classifying the instruction failed (not on an instruction boundary, or an
    /// instruction that cannot be executed out of line).
    #[error(transparent)]
    Analyze(#[from] AnalyzeError),
    /// The out-of-line copy cannot be built.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The address belongs to dprobe's own hit path (kprobe rule 2).
    #[error("{addr} is in {region}, which dprobe runs when a probe hits; probing it would recurse")]
    Blacklisted {
        /// The address.
        addr: Addr,
        /// The part of dprobe it belongs to.
        region: String,
    },
    /// A probe that needs a function's first instruction (typed entry and return probes) was
    /// given another address.
    #[error("{addr} is not the first instruction of a function ({function} starts at {start})")]
    NotFunctionEntry {
        /// The address.
        addr: Addr,
        /// The function containing it.
        function: String,
        /// Where that function starts.
        start: Addr,
    },
    /// Return probes cannot work in this process.
    #[error("return probes are not possible here: {reason}")]
    ReturnProbesUnavailable {
        /// Why.
        reason: String,
    },
    /// Registration or unregistration was called from inside a probe handler.
    #[error("probes cannot be registered or unregistered from inside a handler")]
    InHandler,
    /// No memory for an out-of-line slot could be mapped.
    #[error("no out-of-line slot for {addr}: {reason}")]
    NoSlot {
        /// The probe address.
        addr: Addr,
        /// Why.
        reason: String,
    },
    /// The code could not be written.
    #[error("cannot patch {addr}: {reason}")]
    Patch {
        /// Where.
        addr: Addr,
        /// Why.
        reason: String,
    },
    /// The code at the address holds a breakpoint that is not dprobe's.
    #[error("{addr} already holds a breakpoint that is not dprobe's (a debugger's, a kernel uprobe's, or the program's own int3)")]
    ForeignBreakpoint {
        /// Where.
        addr: Addr,
    },
    /// The probe handle does not belong to this engine or was already unregistered.
    #[error("probe {0} is not registered")]
    NotRegistered(u64),
    /// An operating-system call failed.
    #[error("{what}: {error}")]
    Os {
        /// What dprobe was doing.
        what: &'static str,
        /// The error (in the message, not its source: a chain of sources would say it twice).
        error: std::io::Error,
    },
}

impl ProbeError {
    /// Whether the target may appear later: its library, or the library that defines it,
    /// is not loaded yet.
    pub fn may_load_later(&self) -> bool {
        match self {
            ProbeError::Target(e) => e.may_load_later(),
            _ => false,
        }
    }
}

impl From<ResolveError> for ProbeError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::NotMapped { addr }
            | ResolveError::NotCode { addr, .. }
            | ResolveError::NoFunction { addr } => {
                ProbeError::InvalidAddress { addr, reason: e.why_not_code().unwrap_or_default() }
            }
            other => ProbeError::Target(other),
        }
    }
}
