//! Indirect functions' choices handed from one process to another.
//!
//! A process reads an indirect function's choice in its own copy of the object (see
//! `ifunc.rs`). Inside a traced program (dprobe's agent) that copy may be of no use: a library
//! the program is loading is mapped before the loader relocates it, and the agent places the
//! probes waiting for that library in between, so that its constructors and first calls are
//! probed; its record of the choice is still empty, and its resolvers cannot run. dprobe,
//! which has the same file loaded (the C library, the maths library), reads the choice in its
//! own process and hands it over with the probe: the same file on the same CPU chooses the
//! same implementation.
//!
//! Except where the C library is told otherwise: `GLIBC_TUNABLES` can turn the processor's
//! features off for one process. A choice is neither handed over from a process that has it,
//! nor taken by one that has it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use crate::ifunc::chosen_implementation;
use crate::maps::read_maps;
use crate::{ObjectName, Symbols};

/// The implementation an indirect function of one file chose in another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfuncChoice {
    /// The file's device.
    pub device: u64,
    /// The file's inode.
    pub inode: u64,
    /// The file's size.
    pub size: u64,
    /// The file's modification time, in nanoseconds.
    pub modified: i64,
    /// The link-time address of the function's resolver (the symbol's value).
    pub resolver: u64,
    /// The link-time address of the implementation chosen.
    pub chosen: u64,
}

/// The file fields of an [`IfuncChoice`] for the file at `path`.
fn file_identity(path: &str) -> Option<(u64, u64, u64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// Whether this process's C library was told to choose otherwise (see the module's comment).
fn tuned() -> bool {
    std::env::var_os("GLIBC_TUNABLES").is_some()
}

/// The choices handed to this process.
static KNOWN: Mutex<Vec<IfuncChoice>> = Mutex::new(Vec::new());

/// Take `choice`, made in another process, for the indirect functions this process cannot read
/// the choice of itself (unless this process is tuned).
pub fn know_ifunc_choice(choice: IfuncChoice) {
    if tuned() {
        return;
    }
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !known.contains(&choice) {
        known.push(choice);
    }
}

/// The choice handed over for the resolver at link-time address `resolver` of the file at
/// `path`, if it is that very file.
pub(crate) fn known_choice(path: &str, resolver: u64) -> Option<u64> {
    let known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if known.is_empty() {
        return None;
    }
    let (device, inode, size, modified) = file_identity(path)?;
    let same = |c: &&IfuncChoice| {
        (c.device, c.inode, c.size, c.modified, c.resolver) == (device, inode, size, modified, resolver)
    };
    known.iter().find(same).map(|c| c.chosen)
}

/// The choices of this process's own copies of objects, to hand over: each object's symbols
/// are read once.
#[derive(Default)]
pub struct OwnIfuncChoices {
    symbols: HashMap<String, Option<Symbols>>,
}

impl OwnIfuncChoices {
    /// The choice this process made for `function` of the object `binary` (as a probe spec
    /// names them), where it is an indirect function of an object this process has loaded.
    pub fn choice(&mut self, binary: &str, function: &str) -> Option<IfuncChoice> {
        if tuned() {
            return None;
        }
        let object = ObjectName::new(binary).ok()?;
        let symbols = self.symbols.entry(binary.to_owned()).or_insert_with(|| {
            let maps = read_maps().ok()?;
            let own: Vec<_> =
                maps.into_iter().filter(|m| m.path.as_deref().is_some_and(|p| object.matches(p))).collect();
            (!own.is_empty()).then(|| Symbols::load(&own))
        });
        let f = symbols.as_ref()?.find_in(Some(&object), function).filter(|f| f.ifunc)?;
        let file = crate::cache::object_file(&f.object)?;
        let resolver = f.start.0.wrapping_sub(f.bias);
        let chosen = chosen_implementation(&f.object, &file.bytes()?, resolver).ok()?;
        let (device, inode, size, modified) = file_identity(&f.object)?;
        Some(IfuncChoice { device, inode, size, modified, resolver, chosen })
    }
}
