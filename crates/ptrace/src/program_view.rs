//! The traced process's memory as the program itself sees it, for the values probes fetch.
//!
//! The engine's own reads go through `/proc/PID/mem`, which reads through page protections:
//! it must see code and place probes there. A fetch made that way reads what the program
//! cannot: a string on a page it made `PROT_NONE` (a guard page, memory it has set aside)
//! came out as text, where the agent's read and the kernel's uprobes fault and show
//! `(fault)`. Fetches read with `process_vm_readv`, which honours the protections, so every
//! engine shows the same value.

use dprobe_arch::{Addr, Memory, MemoryFault};

/// Process `pid`'s memory read with its protections; `fallback` (the engine's own view) where
/// the kernel will not read it that way at all (no such call, or no such process: a test's
/// fake kernel).
pub(crate) struct ProgramView<'a> {
    pub(crate) pid: i32,
    pub(crate) fallback: &'a mut dyn Memory,
}

impl Memory for ProgramView<'_> {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { addr, len: buf.len(), write: false };
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr.0 as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which lives for the
        // call; the remote side is only read.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n == buf.len() as isize {
            return Ok(());
        }
        match std::io::Error::last_os_error().raw_os_error() {
            _ if n >= 0 => Err(fault),
            Some(libc::ENOSYS | libc::ESRCH | libc::EPERM) => self.fallback.read(addr, buf),
            _ => Err(fault),
        }
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}
