//! How an engine watches the returns of a function with a return probe, and why.

/// How a return probe watches its function's returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnMode {
    /// At the function's exits (every `ret`, every tail call): no return address is touched.
    Exits {
        /// How many exit sites.
        sites: usize,
    },
    /// By replacing the return address at the entry, because the exits are not all known
    /// (or this was asked for).
    ReturnAddress {
        /// Why.
        why: String,
    },
}

impl std::fmt::Display for ReturnMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReturnMode::Exits { sites } => {
                write!(f, "returns watched at {sites} exit site{}", if *sites == 1 { "" } else { "s" })
            }
            ReturnMode::ReturnAddress { why } => write!(f, "returns watched through the return address: {why}"),
        }
    }
}
