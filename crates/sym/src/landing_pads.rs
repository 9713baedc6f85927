//! The landing pads of an object's C++ exceptions (and Rust's unwinding): the places the
//! unwinder resumes a frame that a throw passes through.
//!
//! Each FDE of `.eh_frame` whose CIE has a personality may name an LSDA; the LSDA's call-site
//! table ([`call_sites`](crate::lsda::call_sites)) gives, for each range of calls, the landing
//! pad the frame resumes at. No branch names a landing pad, so the branch decoding cannot see
//! them: a jump written over the bytes before one would have a throw resume in its middle.

use gimli::{BaseAddresses, CieOrFde, EhFrame, EhFrameHdr, LittleEndian, Pointer, UnwindSection};
use object::elf::PT_GNU_EH_FRAME;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Object, ObjectSection, ObjectSegment, SectionFlags};

use dprobe_arch::{Addr, LandingPad};

use crate::lsda::call_sites;

/// Every landing pad of the object whose bytes are `data`, at link-time addresses, with the
/// start of the calls it catches for; `None` when its unwind tables cannot all be read (an
/// FDE or an LSDA this reader does not understand: its landing pads are unknown).
pub fn landing_pads(data: &[u8]) -> Option<Vec<LandingPad>> {
    let file = object::File::parse(data).ok()?;
    let Some((eh_frame, address)) = eh_frame_of(&file, data)? else { return Some(Vec::new()) };
    let mut bases = BaseAddresses::default().set_eh_frame(address);
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let eh_frame = EhFrame::new(eh_frame, LittleEndian);
    let mut entries = eh_frame.entries(&bases);
    let mut pads = Vec::new();
    while let Some(entry) = entries.next().ok()? {
        let CieOrFde::Fde(partial) = entry else { continue };
        let fde = partial.parse(|s, b, o| s.cie_from_offset(b, o)).ok()?;
        let lsda = match fde.lsda() {
            None => continue,
            Some(Pointer::Direct(a)) => a,
            Some(Pointer::Indirect(a)) => u64::from_le_bytes(bytes_at(&file, data, a)?.get(..8)?.try_into().ok()?),
        };
        let sites = call_sites(bytes_at(&file, data, lsda)?, lsda, fde.initial_address()).ok()?;
        pads.extend(sites.iter().filter_map(|s| Some(LandingPad { pad: Addr(s.landing_pad?), calls: Addr(s.start) })));
    }
    Some(pads)
}

/// The bytes of `.eh_frame` and its link-time address: from its section, or, in a file
/// without section headers, from the pointer in `.eh_frame_hdr` (`PT_GNU_EH_FRAME`) to the
/// end of the segment holding it. `Some(None)` when the file has neither (no unwind tables);
/// `None` when they cannot be read.
fn eh_frame_of<'a>(file: &object::File<'a>, data: &'a [u8]) -> Option<Option<(&'a [u8], u64)>> {
    if file.sections().next().is_some() {
        return match file.section_by_name(".eh_frame") {
            Some(s) => Some(Some((s.data().ok()?, s.address()))),
            None => Some(None),
        };
    }
    let elf = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = elf.endian();
    let Some(hdr) = elf.elf_program_headers().iter().find(|p| p.p_type(endian) == PT_GNU_EH_FRAME) else {
        return Some(None);
    };
    let hdr_address = hdr.p_vaddr(endian);
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_address);
    let parsed = EhFrameHdr::new(bytes_at(file, data, hdr_address)?, LittleEndian).parse(&bases, 8).ok()?;
    let Pointer::Direct(address) = parsed.eh_frame_ptr() else { return None };
    Some(Some((bytes_at(file, data, address)?, address)))
}

/// The file's bytes from link-time `address` to the end of the section (or, without section
/// headers, the loadable segment) holding it.
fn bytes_at<'a>(file: &object::File<'a>, data: &'a [u8], address: u64) -> Option<&'a [u8]> {
    const SHF_ALLOC: u64 = 0x2;
    // Sections that are not loaded (debug information, comments) all sit at address 0.
    let loaded =
        |s: &object::Section<'_, '_>| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & SHF_ALLOC != 0);
    let ranges = file
        .sections()
        .filter(loaded)
        .filter_map(|s| Some((s.address(), s.file_range()?)))
        .chain(file.segments().map(|s| (s.address(), s.file_range())));
    let (start, (offset, size)) = ranges.into_iter().find(|&(a, (_, size))| (a..a + size).contains(&address))?;
    let from = usize::try_from(offset + (address - start)).ok()?;
    data.get(from..usize::try_from(offset + size).ok()?)
}
