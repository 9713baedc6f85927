//! Indirect functions' choices handed from one process to another.
//!
//! A process reads an indirect function's choice in its own copy of the object (see
//! `ifunc.rs`). Inside a traced program (dprobe's agent) that copy may be of no use: a library
//! the program is loading is mapped before the loader relocates it, and the agent places the
//! probes waiting for that library in between, so that its constructors and first calls are
//! probed; its record of the choice is not written yet, and its resolvers cannot run. (Nor
//! does the agent run the resolvers of a library the program loaded with `dlopen` and may
//! unload, relocated or not.) dprobe, which has the same file loaded (the C library, the maths
//! library), reads the choice in its own process and hands it over with the probe: the same
//! file on the same CPU chooses the same implementation.
//!
//! Except where the C library is told otherwise: `GLIBC_TUNABLES` can turn the processor's
//! features off for one process, read from the environment the process started with. A choice
//! is neither handed over from a process that started with it, nor taken by one that did. (Nor
//! is a process whose CPU is made to look another told apart: one under an emulator or a
//! recorder that masks the processor's features, run on this machine.)

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, OnceLock};

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
    Some((m.dev(), m.ino(), m.size(), m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())))
}

/// Whether this process's C library was told to choose otherwise: `GLIBC_TUNABLES` in the
/// environment the process started with (which its C library read then, whatever the
/// program did with its environment since), or where that cannot be read.
fn tuned() -> bool {
    static TUNED: OnceLock<bool> = OnceLock::new();
    *TUNED.get_or_init(|| {
        std::fs::read("/proc/self/environ")
            .map_or(true, |env| env.split(|&b| b == 0).any(|v| v.starts_with(b"GLIBC_TUNABLES=")))
    })
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
    if KNOWN.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        return None;
    }
    // (Outside the lock: a file system may be slow to answer.)
    let file = file_identity(path)?;
    let same = |c: &&IfuncChoice| ((c.device, c.inode, c.size, c.modified), c.resolver) == (file, resolver);
    KNOWN.lock().unwrap_or_else(|e| e.into_inner()).iter().find(same).map(|c| c.chosen)
}

/// The choices of this process's own copies of objects, to hand over: each object's symbols
/// are read once, each function's choice made once.
#[derive(Default)]
pub struct OwnIfuncChoices {
    symbols: HashMap<String, Option<Symbols>>,
    choices: HashMap<(String, String), Option<IfuncChoice>>,
}

impl OwnIfuncChoices {
    /// The choice this process made for `function` of the object `binary` (as a probe spec
    /// names them), where it is an indirect function of an object this process has loaded.
    pub fn choice(&mut self, binary: &str, function: &str) -> Option<IfuncChoice> {
        if tuned() {
            return None;
        }
        let key = (binary.to_owned(), function.to_owned());
        if let Some(known) = self.choices.get(&key) {
            return *known;
        }
        let choice = self.choice_now(binary, function);
        self.choices.insert(key, choice);
        choice
    }

    fn choice_now(&mut self, binary: &str, function: &str) -> Option<IfuncChoice> {
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
