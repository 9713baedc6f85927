//! An object file's bytes, wherever they are held.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// One version of an object file, its DWARF left as zeros (`sparse_read.rs`): read into this
/// process's memory, or an image of it another process handed over (the agent maps dprobe's copy of the C library instead of
/// reading the file again; `import_objects_with_images`). Cheap to clone.
#[derive(Clone)]
pub struct FileBytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl FileBytes {
    /// Bytes held by `holder` (a `Vec<u8>`, or a mapping that stays valid and unchanged for as
    /// long as it lives).
    pub fn new(holder: impl AsRef<[u8]> + Send + Sync + 'static) -> FileBytes {
        FileBytes(Arc::new(holder))
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}
