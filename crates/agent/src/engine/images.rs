//! dprobe's copies of the C library and the loader, handed to every agent it starts.
//!
//! The agent's own probes are in the C library, and the jump check that places them as jumps
//! reads the library's bytes: 2 MB read again in every program dprobe follows (about a
//! millisecond each). dprobe holds those bytes already (it analysed the same file), so it
//! writes them once into a memory file sealed against any change and sends its descriptor
//! with the files it hands over (`dprobe_sym::export_objects_with_images`). The agent maps it
//! read-only: the pages are shared, and only the few it reads are touched. Sealed, the file
//! can neither shrink under the mapping (a read past its end would be a `SIGBUS` in the
//! program) nor change.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use dprobe_sym::{FileBytes, FileVersion};

use crate::wire::MAX_IMAGES;

/// The sealed memory files made so far, by the version of the file each holds.
static MADE: Mutex<Vec<(FileVersion, Arc<OwnedFd>)>> = Mutex::new(Vec::new());

/// The images handed over with one message: their descriptors, in the order of the numbers
/// the message gives them.
#[derive(Default)]
pub(super) struct Images(pub(super) Vec<Arc<OwnedFd>>);

impl Images {
    /// The number of the image of `version` (whose bytes are `bytes`), made now if it was
    /// not; `None` where no memory file could be made, or the message has its most.
    pub(super) fn number_of(&mut self, version: &FileVersion, bytes: &FileBytes) -> Option<u32> {
        if self.0.len() == MAX_IMAGES {
            return None;
        }
        let fd = sealed_file_of(version, bytes)?;
        let number = match self.0.iter().position(|f| Arc::ptr_eq(f, &fd)) {
            Some(at) => at,
            None => {
                self.0.push(fd);
                self.0.len() - 1
            }
        };
        Some(number as u32)
    }
}

/// dprobe's sealed memory file holding `bytes`, `version` as dprobe read it (its DWARF left
/// as zeros), made when first asked.
fn sealed_file_of(version: &FileVersion, bytes: &FileBytes) -> Option<Arc<OwnedFd>> {
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, fd)) = made.iter().find(|(v, _)| v == version) {
        return Some(fd.clone());
    }
    let name = format!("dprobe-image:{}", version.path().rsplit('/').next().unwrap_or_default());
    let fd = Arc::new(dprobe_ptrace::sealed_memory_file(bytes, &name, false)?);
    made.push((version.clone(), fd.clone()));
    Some(fd)
}
