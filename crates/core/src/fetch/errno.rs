//! Where a thread keeps its C `errno`: glibc's `__errno_location` is
//! `mov GOT(%rip),%rax; add %fs:0,%rax; ret`, so `errno` lives at the thread pointer plus the
//! offset stored in that GOT entry, the same for every thread.

use dprobe_arch::{endbr64_len, Addr, Memory, MemoryFault};

/// Why the offset of `errno` could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrnoError {
    /// The function's code or its GOT entry could not be read.
    #[error("reading __errno_location: {0}")]
    Unreadable(#[from] MemoryFault),
    /// The function is not the code dprobe knows.
    #[error("this libc's __errno_location is not the usual `mov GOT(%rip),%rax; add %fs:0,%rax`")]
    UnknownCode,
}

/// The offset of `errno` from the thread pointer (`fs` base), read from the code of
/// `__errno_location` at `errno_location` and the GOT entry it loads.
pub fn errno_tls_offset(memory: &mut dyn Memory, errno_location: Addr) -> Result<u64, ErrnoError> {
    let mut code = [0u8; 20];
    memory.read(errno_location, &mut code)?;
    let start = endbr64_len(&code);
    let c = &code[start..];
    let add_fs = [0x64, 0x48, 0x03, 0x04, 0x25, 0, 0, 0, 0];
    if c[..3] != [0x48, 0x8b, 0x05] || c[7..16] != add_fs {
        return Err(ErrnoError::UnknownCode);
    }
    let disp = i32::from_le_bytes([c[3], c[4], c[5], c[6]]) as i64;
    let got = errno_location.0.wrapping_add((start + 7) as u64).wrapping_add(disp as u64);
    Ok(memory.read_u64(Addr(got))?)
}
