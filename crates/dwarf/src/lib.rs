//! DWARF for dprobe: where a binary's debug information is ([`DebugInfo::load`]: in the
//! binary, by build-id under `/usr/lib/debug/.build-id/`, through `.gnu_debuglink`, in a
//! local debuginfod cache), and what it says about the code.
//!
//! ```no_run
//! use dprobe_dwarf::DebugInfo;
//! match DebugInfo::load("/usr/bin/ls")? {
//!     Some(info) => println!("DWARF {}", info.origin()),
//!     None => println!("no DWARF for /usr/bin/ls"),
//! }
//! # Ok::<(), dprobe_dwarf::DwarfError>(())
//! ```
#![forbid(unsafe_code)]

mod copies;
mod debuginfo;
mod error;
mod globals;
mod inlined;
mod lines;
mod location;
mod scope;
mod types;
mod vars;

pub use debuginfo::{hex, CallFrames, DebugInfo, Origin, Reader, Search};
pub use error::{DwarfError, VarError};
pub use gimli;
pub use inlined::{find_function, find_functions, FunctionInfo, InlinedCopy};
pub use lines::{file_matches, LineError, LineTable};
pub use scope::Function;
pub use vars::{
    fetch_text, place_vars, place_vars_at_return, place_vars_in, signature, Placed, Request, Shown, Signature,
    VarFetch, VarInfo,
};
