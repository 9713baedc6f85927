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
//!
//! Where the object holds no such relocation (nothing inside it calls the function through
//! its own GOT: libc's `strstr`, `wcsrchr`, `__memset_chk`), the choice is made only for the
//! other objects' calls, in their GOTs. A crate that may run code in this process can then
//! give a [`ResolverRunner`] ([`run_resolvers_with`]): it runs the resolver here, as the
//! loader would, and the answer is read the same way as the GOT slot.

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

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
    /// The resolver, run here, chose code outside the object (the clock functions choose the
    /// kernel's vDSO), which is not the same in another process and cannot be probed.
    OutsideObject,
}

/// Runs, in this process, the resolver of an indirect function of the loaded object `object`
/// (a path as this process's maps give it) at run-time address `resolver`, and gives the
/// address it chose; `None` where it will not run that object's resolvers.
pub type ResolverRunner = fn(object: &str, resolver: u64) -> Option<u64>;

/// The [`ResolverRunner`], where one was given.
static RUNNER: OnceLock<ResolverRunner> = OnceLock::new();

/// Let `runner` choose for indirect functions whose object records no choice (see the
/// module's documentation). The first runner given stays.
pub fn run_resolvers_with(runner: ResolverRunner) {
    let _ = RUNNER.set(runner);
}

impl Unchosen {
    /// The reason, for messages.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Unchosen::NoRelocation => "the library holds no relocation that records its choice",
            Unchosen::NotLoadedHere => "dprobe has not loaded that library itself to see the choice",
            Unchosen::Unreadable => "dprobe could not read the library's record of its choice",
            Unchosen::OutsideObject => "its resolver chooses code outside the library",
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
        .map(|(offset, _)| offset);
    let (own_path, own_bias) = own_load_bias(path).ok_or(match slot {
        Some(_) => Unchosen::NotLoadedHere,
        None => Unchosen::NoRelocation,
    })?;
    let chosen_here = match slot {
        Some(slot) => {
            let mut value = [0u8; 8];
            let memory = std::fs::File::open("/proc/self/mem").map_err(|_| Unchosen::Unreadable)?;
            memory.read_exact_at(&mut value, own_bias.wrapping_add(slot)).map_err(|_| Unchosen::Unreadable)?;
            u64::from_le_bytes(value)
        }
        None => {
            let run = RUNNER.get().ok_or(Unchosen::NoRelocation)?;
            run(&own_path, own_bias.wrapping_add(resolver)).ok_or(Unchosen::NoRelocation)?
        }
    };
    let chosen = chosen_here.wrapping_sub(own_bias);
    let in_object = file.segments().any(|s| {
        use object::ObjectSegment;
        (s.address()..s.address() + s.size()).contains(&chosen)
    });
    match (in_object, slot) {
        (true, _) => Ok(chosen),
        (false, Some(_)) => Err(Unchosen::Unreadable),
        (false, None) => Err(Unchosen::OutsideObject),
    }
}

/// Where dprobe's own process has loaded the file at `path` (by whatever name its maps give
/// it: `/lib/…` and `/usr/lib/…` are one file on a merged-/usr system): that name and the
/// object's load bias.
fn own_load_bias(path: &str) -> Option<(String, u64)> {
    let wanted = std::fs::canonicalize(path).ok()?;
    let maps = read_maps().ok()?;
    let own_path = maps
        .iter()
        .filter(|m| m.offset == 0)
        .filter_map(|m| m.path.as_deref())
        .find(|p| std::fs::canonicalize(p).is_ok_and(|c| c == wanted))?;
    Some((own_path.to_owned(), load_bias_of(&maps, own_path)?))
}
