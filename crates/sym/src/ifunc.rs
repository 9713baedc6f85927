//! GNU indirect functions (`STT_GNU_IFUNC`): `strlen`, `memcpy` and most of libc's string
//! functions. The symbol's address is a resolver that the dynamic loader runs once, when the
//! object loads, to choose an implementation for this CPU (`__strlen_avx2`). Callers never run
//! the symbol's own code, so a probe there would never fire; dprobe probes the chosen
//! implementation instead.
//!
//! The loader writes its choice into the object's GOT through an `R_X86_64_IRELATIVE`
//! relocation whose addend is the resolver. dprobe reads that slot in its own process, which
//! maps the same file on the same CPU, so it sees the choice every process on this machine
//! makes (unless a process changes the choice with `GLIBC_TUNABLES`).

use std::os::unix::fs::FileExt;

use object::read::elf::ElfFile64;
use object::{Object, RelocationFlags};

use crate::maps::read_maps;
use crate::symbols::load_bias_of;

/// `R_X86_64_IRELATIVE`: the slot gets what the resolver at the addend returns.
const R_X86_64_IRELATIVE: u32 = 37;

/// Why the implementation an indirect function stands for is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unchosen {
    /// The object has no `R_X86_64_IRELATIVE` relocation for this resolver (it only resolves
    /// calls from other objects, through their own GOT).
    NoRelocation,
    /// dprobe itself has not loaded the object, so there is no choice to read.
    NotLoadedHere,
    /// dprobe's copy of the GOT slot could not be read, or points outside the object.
    Unreadable,
}

impl Unchosen {
    /// The reason, for messages.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Unchosen::NoRelocation => "the library holds no relocation that records its choice",
            Unchosen::NotLoadedHere => "dprobe has not loaded that library itself to see the choice",
            Unchosen::Unreadable => "dprobe could not read the library's record of its choice",
        }
    }
}

/// The link-time address of the implementation chosen for the indirect function whose
/// resolver is at link-time address `resolver` in the object `path` (whose bytes are `data`).
pub(crate) fn chosen_implementation(path: &str, data: &[u8], resolver: u64) -> Result<u64, Unchosen> {
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|_| Unchosen::NoRelocation)?;
    let slot = file
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .find(|(_, r)| {
            matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == R_X86_64_IRELATIVE)
                && r.addend() as u64 == resolver
        })
        .map(|(offset, _)| offset)
        .ok_or(Unchosen::NoRelocation)?;
    let own_bias = own_load_bias(path).ok_or(Unchosen::NotLoadedHere)?;
    let mut value = [0u8; 8];
    let memory = std::fs::File::open("/proc/self/mem").map_err(|_| Unchosen::Unreadable)?;
    memory.read_exact_at(&mut value, own_bias.wrapping_add(slot)).map_err(|_| Unchosen::Unreadable)?;
    let chosen = u64::from_le_bytes(value).wrapping_sub(own_bias);
    let in_object = file.segments().any(|s| {
        use object::ObjectSegment;
        (s.address()..s.address() + s.size()).contains(&chosen)
    });
    in_object.then_some(chosen).ok_or(Unchosen::Unreadable)
}

/// Where dprobe's own process has loaded the file at `path` (by whatever name its maps give
/// it: `/lib/…` and `/usr/lib/…` are one file on a merged-/usr system).
fn own_load_bias(path: &str) -> Option<u64> {
    let wanted = std::fs::canonicalize(path).ok()?;
    let maps = read_maps().ok()?;
    let own_path = maps
        .iter()
        .filter(|m| m.offset == 0)
        .filter_map(|m| m.path.as_deref())
        .find(|p| std::fs::canonicalize(p).is_ok_and(|c| c == wanted))?;
    load_bias_of(&maps, own_path)
}
