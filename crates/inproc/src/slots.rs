//! Out-of-line slots: chunks of executable memory mapped near the probed code, so that
//! RIP-relative copies keep a 32-bit displacement and the jump back is a 5-byte `jmp rel32`.
//!
//! Slots are written through `/proc/self/mem` (the pages are `r-x` from the start) and are
//! never unmapped or given to another address: a thread preempted inside a slot after its
//! probe was removed still finds the same code there and jumps back to the original stream.
//! A probe registered again at the same address reuses its old slot.

use std::io;

use dprobe_arch::{Addr, SLOT_SIZE};

use dprobe_sym::{free_pages_near, Mapping};

const PAGE: u64 = 4096;
/// How much is mapped at a time: enough for the slots and detours of a batch of a thousand
/// probes or more (pages never written are never backed by memory).
const CHUNK: u64 = 64 * PAGE;
/// How far from the probe a slot page may be: well inside the ±2 GiB of a rel32.
const REACH: u64 = 1 << 30;

/// One mapping of [`CHUNK`] bytes, handed out slot by slot.
struct SlotPage {
    base: Addr,
    used: u64,
}

/// Allocates slots near probe addresses.
#[derive(Default)]
pub struct SlotPool {
    pages: Vec<SlotPage>,
}

impl SlotPool {
    /// A slot within [`REACH`] of `near`, mapping a new page if needed.
    pub fn alloc_near(&mut self, near: Addr, maps: &[Mapping]) -> io::Result<Addr> {
        self.alloc_run_near(near, maps, 1)
    }

    /// `n` consecutive slots within [`REACH`] of `near` (a detour takes more than one).
    pub fn alloc_run_near(&mut self, near: Addr, maps: &[Mapping], n: u64) -> io::Result<Addr> {
        let per_page = CHUNK / SLOT_SIZE as u64;
        if let Some(page) = self.pages.iter_mut().find(|p| p.used + n <= per_page && p.base.0.abs_diff(near.0) < REACH)
        {
            page.used += n;
            return Ok(page.base.offset((page.used - n) * SLOT_SIZE as u64));
        }
        let base = map_chunk_near(near, maps)?;
        self.pages.push(SlotPage { base, used: n });
        Ok(base)
    }

    /// Whether `addr` is inside one of the slot pages (dprobe's own code: never probed).
    pub fn owns(&self, addr: Addr) -> bool {
        self.pages.iter().any(|p| addr >= p.base && addr.0 < p.base.0 + CHUNK)
    }
}

/// Map a chunk in the free gap closest to `near`. `maps` was read before the registration
/// began, so it misses the chunks mapped since: when every gap it shows is taken, the map is
/// read again.
fn map_chunk_near(near: Addr, maps: &[Mapping]) -> io::Result<Addr> {
    map_chunk_in_gaps(near, maps).or_else(|_| map_chunk_in_gaps(near, &dprobe_sym::read_maps()?))
}

/// Map a chunk in the gap of `maps` closest to `near`, trying each gap in turn.
fn map_chunk_in_gaps(near: Addr, maps: &[Mapping]) -> io::Result<Addr> {
    let mut last = io::Error::other("no free address range within 1 GiB of the probe");
    for candidate in free_pages_near(maps, near, REACH) {
        // The page closest to `near` starts the chunk above the probe, ends it below.
        let below = Addr(candidate.0.saturating_sub(CHUNK - PAGE));
        let order = if candidate.0 >= near.0 { [candidate, below] } else { [below, candidate] };
        for at in order.into_iter().filter(|a| a.0.abs_diff(near.0) < REACH) {
            match crate::sys::map_code_page_at(at, CHUNK as usize) {
                Ok(a) => return Ok(a),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}
