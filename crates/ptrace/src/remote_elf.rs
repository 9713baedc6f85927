//! An object's program headers and dynamic section, read from a traced process's memory
//! where the loader mapped them: what the loader's state is found through before any of the
//! program's own code has run.

use dprobe_arch::{Addr, Memory};
use object::elf::DT_NULL;

/// Bytes of an ELF64 program header.
const PHDR_BYTES: u64 = 56;
/// Where `p_vaddr` is in a program header.
const P_VADDR: u64 = 16;
/// Program headers read at most.
const MAX_PHDRS: u64 = 64;
/// Bytes of a dynamic section's entry (`d_tag`, `d_val`).
const DYN_BYTES: u64 = 16;

/// The little-endian word at `at`.
pub(crate) fn word(memory: &mut dyn Memory, at: u64) -> Option<u64> {
    let mut w = [0u8; 8];
    memory.read(Addr(at), &mut w).ok().map(|()| u64::from_le_bytes(w))
}

/// `(p_type, p_vaddr)` of each of the `count` program headers at `at` (64 at most); `None`
/// for one that cannot be read.
pub(crate) fn program_headers(
    memory: &mut dyn Memory,
    at: u64,
    count: u64,
) -> impl Iterator<Item = Option<(u32, u64)>> + '_ {
    (0..count.min(MAX_PHDRS)).map(move |i| {
        let header = at.wrapping_add(i * PHDR_BYTES);
        Some((word(memory, header)? as u32, word(memory, header.wrapping_add(P_VADDR))?))
    })
}

/// `(d_tag, d_val)` of each entry of the dynamic section at `at`, up to its `DT_NULL` (`limit`
/// entries at most); `None` for one that cannot be read.
pub(crate) fn dynamic_entries(
    memory: &mut dyn Memory,
    at: u64,
    limit: u64,
) -> impl Iterator<Item = Option<(u64, u64)>> + '_ {
    (0..limit)
        .map(move |i| {
            let entry = at.wrapping_add(i * DYN_BYTES);
            Some((word(memory, entry)?, word(memory, entry.wrapping_add(8))?))
        })
        .take_while(|entry| entry.is_none_or(|(tag, _)| tag != u64::from(DT_NULL)))
}
