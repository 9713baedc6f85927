//! The seam through which emulation reaches the probed program's memory.

use crate::Addr;

/// A read or write that the probed program's memory refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} {len} bytes at {addr}", if *.write { "write" } else { "read" })]
pub struct MemoryFault {
    /// First address of the access.
    pub addr: Addr,
    /// Size of the access.
    pub len: usize,
    /// Whether it was a write.
    pub write: bool,
}

/// Memory of the probed program, as seen by the emulator.
///
/// The in-process engine reads and writes its own memory; the ptrace engine goes through
/// `process_vm_readv`. Implementations must not panic on a bad address: they return
/// [`MemoryFault`].
pub trait Memory {
    /// Fill `buf` from `addr`.
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault>;
    /// Write `data` at `addr`.
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault>;

    /// Read a little-endian `u64`.
    fn read_u64(&mut self, addr: Addr) -> Result<u64, MemoryFault> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian `u64`.
    fn write_u64(&mut self, addr: Addr, value: u64) -> Result<(), MemoryFault> {
        self.write(addr, &value.to_le_bytes())
    }
}

/// Memory that refuses every read and write: for decoding code on its own, with nothing else of
/// the program at hand (a jump table in its data is then unknown, never guessed).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMemory;

impl Memory for NoMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: buf.len(), write: false })
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}
