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

/// `R_X86_64_GLOB_DAT`: the slot gets a symbol's address.
const R_X86_64_GLOB_DAT: u32 = 6;

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
    /// This process's copy of the object is mapped but not relocated yet (it is being loaded):
    /// its resolvers cannot run.
    NotRelocatedHere,
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
            Unchosen::NotRelocatedHere => {
                "the library is still being loaded (its record of the choice is not written, its resolver cannot run yet)"
            }
        }
    }
}

/// The link-time address of the implementation chosen for the indirect function whose
/// resolver is at link-time address `resolver` in the object `path` (whose bytes are `data`):
/// as this process chose, or, where this process cannot tell, as another process that has the
/// same file chose and said (`ifunc_choices.rs`).
pub(crate) fn chosen_implementation(path: &str, data: &[u8], resolver: u64) -> Result<u64, Unchosen> {
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|_| Unchosen::NoRelocation)?;
    let in_object = |chosen: u64| {
        file.segments().any(|s| {
            use object::ObjectSegment;
            (s.address()..s.address() + s.size()).contains(&chosen)
        })
    };
    match chosen_here(&file, path, resolver, in_object) {
        Err(Unchosen::OutsideObject) => Err(Unchosen::OutsideObject),
        Err(why) => crate::ifunc_choices::known_choice(path, resolver).filter(|c| in_object(*c)).ok_or(why),
        chosen => chosen,
    }
}

/// [`chosen_implementation`] as this process chose.
fn chosen_here(
    file: &ElfFile64<object::Endianness>,
    path: &str,
    resolver: u64,
    in_object: impl Fn(u64) -> bool,
) -> Result<u64, Unchosen> {
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
            // Read before the loader wrote it, the slot would say nothing of the choice.
            if !relocated_here(file, own_bias)? {
                return Err(Unchosen::NotRelocatedHere);
            }
            let mut value = [0u8; 8];
            let memory = std::fs::File::open("/proc/self/mem").map_err(|_| Unchosen::Unreadable)?;
            memory.read_exact_at(&mut value, own_bias.wrapping_add(slot)).map_err(|_| Unchosen::Unreadable)?;
            u64::from_le_bytes(value)
        }
        None => {
            let run = RUNNER.get().ok_or(Unchosen::NoRelocation)?;
            if !relocated_here(file, own_bias)? {
                return Err(Unchosen::NotRelocatedHere);
            }
            run(&own_path, own_bias.wrapping_add(resolver)).ok_or(Unchosen::NoRelocation)?
        }
    };
    let chosen = chosen_here.wrapping_sub(own_bias);
    match (in_object(chosen), slot) {
        (true, _) => Ok(chosen),
        (false, Some(_)) => Err(Unchosen::Unreadable),
        (false, None) => Err(Unchosen::OutsideObject),
    }
}

/// Whether the loader has relocated this process's copy of `file` (loaded at `own_bias`): the
/// GOT slots meant for the loader's `_rtld_global_ro`, through which glibc's resolvers read
/// the processor's features, are filled. A library being loaded is mapped before it is
/// relocated, and a probe on it may be placed in between (the agent follows loads as they
/// happen); its resolver would then read through an empty slot.
fn relocated_here(file: &ElfFile64<object::Endianness>, own_bias: u64) -> Result<bool, Unchosen> {
    use object::{ObjectSymbol, ObjectSymbolTable, RelocationTarget};
    let Some(symbols) = file.dynamic_symbol_table() else { return Ok(true) };
    let memory = std::fs::File::open("/proc/self/mem").map_err(|_| Unchosen::Unreadable)?;
    for (slot, r) in file.dynamic_relocations().into_iter().flatten() {
        let glob_dat = matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == R_X86_64_GLOB_DAT);
        let RelocationTarget::Symbol(index) = r.target() else { continue };
        if !glob_dat || symbols.symbol_by_index(index).and_then(|s| s.name()).ok() != Some("_rtld_global_ro") {
            continue;
        }
        let mut value = [0u8; 8];
        memory.read_exact_at(&mut value, own_bias.wrapping_add(slot)).map_err(|_| Unchosen::Unreadable)?;
        if value == [0; 8] {
            return Ok(false);
        }
    }
    Ok(true)
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
