//! The out-of-line pages: mapped into the tracee by making one of its stopped threads run an
//! `mmap` system call, holding the relocated copies of probed instructions and the return
//! trampoline; unmapped the same way when dprobe lets the process go.

use dprobe_arch::{trampoline_code, Addr, Memory, PrepareError, SlotCode, SLOT_SIZE};
use dprobe_core::ProbeError;
use dprobe_sym::{free_pages_near, read_maps_of, Mapping};

use crate::error::TraceError;
use crate::inject::inject_syscall;
use crate::sys::RemoteMemory;

pub const PAGE: usize = 4096;
/// How far a slot may be from its instruction: a RIP-relative displacement reaches ±2 GiB;
/// staying within 1 GiB leaves room for the displacement itself.
const REACH: u64 = 1 << 30;

#[derive(Clone)]
struct Page {
    base: Addr,
    used: usize,
}

/// Where a slot is wanted: near `addr` (within a RIP-relative reach), in the address space
/// `maps` describes, with stopped thread `tid` to run the `mmap` if a page must be mapped.
#[derive(Clone, Copy)]
pub struct Near<'a> {
    pub tid: i32,
    pub addr: Addr,
    pub maps: &'a [Mapping],
}

/// The tracee's out-of-line pages.
#[derive(Default, Clone)]
pub struct Xol {
    pages: Vec<Page>,
    trampoline: Option<Addr>,
}

impl Xol {
    /// The address of a new slot in a page within reach of `near`, mapping a page if needed.
    pub fn slot_at(&mut self, memory: &mut RemoteMemory, near: Near<'_>) -> Result<Addr, TraceError> {
        let page = self.page_near(memory, near)?;
        let p = &mut self.pages[page];
        let at = p.base.offset((p.used * SLOT_SIZE) as u64);
        p.used += 1;
        Ok(at)
    }

    /// Write a prepared slot's code.
    pub fn install(&mut self, memory: &mut RemoteMemory, slot: &SlotCode) -> Result<(), TraceError> {
        write(memory, slot.addr, slot.code())
    }

    /// The return trampoline: one `int3` in the first page (mapped near `near` if there is no
    /// page yet). A return probe's entry replaces the return address with it.
    pub fn trampoline(&mut self, memory: &mut RemoteMemory, near: Near<'_>) -> Result<Addr, TraceError> {
        if let Some(t) = self.trampoline {
            return Ok(t);
        }
        let at = self.slot_at(memory, near)?;
        write(memory, at, &trampoline_code())?;
        self.trampoline = Some(at);
        Ok(at)
    }

    /// Where the return trampoline is, if there is one.
    pub fn trampoline_addr(&self) -> Option<Addr> {
        self.trampoline
    }

    /// Forget the pages (the program image they belonged to is gone).
    pub fn clear(&mut self) {
        *self = Xol::default();
    }

    /// Unmap every page through thread `tid` (stopped, and no thread inside a page any more).
    pub fn unmap_all(&mut self, tid: i32, memory: &mut RemoteMemory) -> Result<(), TraceError> {
        for page in std::mem::take(&mut self.pages) {
            inject_syscall(tid, memory, libc::SYS_munmap as u64, [page.base.0, PAGE as u64, 0, 0, 0, 0])?;
        }
        self.trampoline = None;
        Ok(())
    }

    fn page_near(
        &mut self,
        memory: &mut RemoteMemory,
        Near { tid, addr: near, maps }: Near<'_>,
    ) -> Result<usize, TraceError> {
        let per_page = PAGE / SLOT_SIZE;
        if let Some(i) = self.pages.iter().position(|p| p.used < per_page && p.base.0.abs_diff(near.0) < REACH) {
            return Ok(i);
        }
        // The maps the caller read may be older than pages mapped since (this engine's, the
        // program's): the free pages they show are tried, then those of the maps as they are.
        let pid = memory.pid() as u32;
        for round in 0..2 {
            let now = if round == 0 { None } else { Some(read_maps_of(pid).unwrap_or_default()) };
            let hints = free_pages_near(now.as_deref().unwrap_or(maps), near, REACH);
            for hint in hints.into_iter().filter(|h| !self.pages.iter().any(|p| p.base == *h)).take(8) {
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
                let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
                let args = [hint.0, PAGE as u64, prot, flags as u64, u64::MAX, 0];
                if inject_syscall(tid, memory, libc::SYS_mmap as u64, args)? == hint.0 {
                    self.pages.push(Page { base: hint, used: 0 });
                    return Ok(self.pages.len() - 1);
                }
            }
        }
        Err(ProbeError::NoSlot { addr: near, reason: "no free address range within 1 GiB of it".into() }.into())
    }
}

/// A slot that cannot be built refuses the probe.
impl From<PrepareError> for TraceError {
    fn from(e: PrepareError) -> Self {
        TraceError::Probe(e.into())
    }
}

fn write(memory: &mut RemoteMemory, addr: Addr, data: &[u8]) -> Result<(), TraceError> {
    Ok(memory.write(addr, data)?)
}
