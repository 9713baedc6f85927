//! A flat memory for emulation tests.
use dprobe_arch::{Addr, Memory, MemoryFault};

/// `size` bytes of memory starting at `base`; everything else faults.
pub struct FlatMemory {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl FlatMemory {
    pub fn new(base: u64, size: usize) -> Self {
        FlatMemory { base, bytes: vec![0; size] }
    }
    fn range(&self, addr: Addr, len: usize, write: bool) -> Result<std::ops::Range<usize>, MemoryFault> {
        let off = addr.0.checked_sub(self.base).ok_or(MemoryFault { addr, len, write })? as usize;
        if off + len > self.bytes.len() {
            return Err(MemoryFault { addr, len, write });
        }
        Ok(off..off + len)
    }
}

impl Memory for FlatMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let r = self.range(addr, buf.len(), false)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        let r = self.range(addr, data.len(), true)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}
