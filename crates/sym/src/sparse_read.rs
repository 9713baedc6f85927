//! An ELF file read for some of its sections alone.
//!
//! A separate debug file is mostly DWARF: libc's is 4 MB, of which its symbol and string
//! tables are a sixth. Reading it whole costs its every page twice (the page cache's and a
//! fresh buffer's), at every start of a program traced with the agent. A program built with
//! debug information is mostly DWARF too (a Rust test binary: 17 of its 21 MB), and what
//! dprobe reads of it (symbols, code, unwind tables, notes) is the rest. The image built here
//! has the file's length and layout, so that an ELF parser reads it as the file, but holds
//! only the headers, the section headers, and the sections `wanted` keeps: the rest reads as
//! zeros (the buffer's untouched pages cost nothing).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// ELF64 header fields this reader needs (little-endian x86-64 objects).
const EHDR_LEN: usize = 64;
const SHDR_LEN: usize = 64;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 0x2;

/// What [`read_sections`] tells `wanted` of a section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section<'a> {
    /// Its type (`sh_type`).
    pub(crate) kind: u32,
    /// Its name, empty when the names' table does not hold it.
    pub(crate) name: &'a [u8],
    /// Whether the program's image holds it (`SHF_ALLOC`).
    pub(crate) loaded: bool,
}

/// A file image and how many of its bytes were read into it.
pub(crate) struct Image {
    pub(crate) bytes: Vec<u8>,
    pub(crate) read: usize,
}

/// The file at `path` with every section but its DWARF (`.debug_*`, `.zdebug_*`, none of them
/// loaded) read into place: the bytes dprobe reads of an object. A file this reader cannot
/// take apart (no section headers, not a 64-bit little-endian ELF file) is read whole.
pub(crate) fn read_all_but_debug_info(path: &str) -> Option<Image> {
    let is_debug_info = |s: &Section| !s.loaded && (s.name.starts_with(b".debug_") || s.name.starts_with(b".zdebug_"));
    if let Some(image) = read_sections(path, |s| !is_debug_info(s)) {
        return Some(image);
    }
    let bytes = std::fs::read(path).ok()?;
    Some(Image { read: bytes.len(), bytes })
}

/// The file at `path` with only the sections `wanted` accepts read into place (and the section
/// names' table); `None` when it cannot be read, is not a 64-bit little-endian ELF file whose
/// headers lie inside it, or has no section headers.
pub(crate) fn read_sections(path: &str, wanted: impl Fn(&Section) -> bool) -> Option<Image> {
    let file = File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let mut header = [0u8; EHDR_LEN];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (usize::try_from(u64_at(0x20)).ok()?, u16_at(0x36), u16_at(0x38));
    let (shoff, shentsize, shnum, shstrndx) =
        (usize::try_from(u64_at(0x28)).ok()?, u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    if shentsize != SHDR_LEN || shnum == 0 {
        return None;
    }
    let mut image = vec![0u8; len];
    let mut read = 0;
    let mut read_into = |image: &mut [u8], offset: usize, size: usize| -> Option<()> {
        let end = offset.checked_add(size).filter(|&end| end <= len)?;
        file.read_exact_at(&mut image[offset..end], offset as u64).ok()?;
        read += size;
        Some(())
    };
    read_into(&mut image, 0, EHDR_LEN)?;
    read_into(&mut image, phoff, phentsize.checked_mul(phnum)?)?;
    read_into(&mut image, shoff, SHDR_LEN.checked_mul(shnum)?)?;
    let sections: Vec<(u32, u64, usize, usize, usize)> = (0..shnum)
        .map(|i| {
            let h = &image[shoff + i * SHDR_LEN..shoff + (i + 1) * SHDR_LEN];
            let name = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
            let kind = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let flags = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let offset = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
            let size = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
            let at = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
            (kind, flags, at(offset), at(size), at(u64::from(name)))
        })
        .collect();
    // The names' table first: `wanted` may choose by name.
    let names = match sections.get(shstrndx) {
        Some(&(kind, _, offset, size, _)) if kind != SHT_NOBITS => {
            read_into(&mut image, offset, size)?;
            offset..offset + size
        }
        _ => 0..0,
    };
    for (i, &(kind, flags, offset, size, name)) in sections.iter().enumerate() {
        if kind == SHT_NOBITS || i == shstrndx {
            continue;
        }
        let table = &image[names.clone()];
        let name = table.get(name..).map_or(&[][..], |n| &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())]);
        if wanted(&Section { kind, name, loaded: flags & SHF_ALLOC != 0 }) {
            read_into(&mut image, offset, size)?;
        }
    }
    Some(Image { bytes: image, read })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    const SHT_SYMTAB: u32 = 2;
    const SHT_STRTAB: u32 = 3;

    #[test]
    fn the_symbol_tables_read_alone_are_the_file_s() {
        let path = std::env::current_exe().unwrap();
        let path = path.to_str().unwrap();
        let whole = std::fs::read(path).unwrap();
        let sparse = read_sections(path, |s| matches!(s.kind, SHT_SYMTAB | SHT_STRTAB)).unwrap().bytes;
        assert_eq!(sparse.len(), whole.len());
        let (whole, sparse) = (object::File::parse(&*whole).unwrap(), object::File::parse(&*sparse).unwrap());
        let names = |f: &object::File| -> Vec<(String, u64)> {
            f.symbols().map(|s| (s.name().unwrap_or("").to_owned(), s.address())).collect()
        };
        assert!(names(&whole).len() > 1000);
        assert_eq!(names(&sparse), names(&whole));
        let text = |f: &object::File| f.section_by_name(".text").unwrap().data().unwrap().iter().any(|&b| b != 0);
        assert!(text(&whole) && !text(&sparse), "the code is not read");
    }

    /// An object's image holds every section as the file has it, but its DWARF (zeros).
    #[test]
    fn all_but_the_debug_information_is_read() {
        let path = std::env::current_exe().unwrap();
        let path = path.to_str().unwrap();
        let whole = std::fs::read(path).unwrap();
        let image = read_all_but_debug_info(path).unwrap();
        assert_eq!(image.bytes.len(), whole.len());
        let (file, sparse) = (object::File::parse(&*whole).unwrap(), object::File::parse(&*image.bytes).unwrap());
        let mut debug = 0;
        for (section, kept) in file.sections().zip(sparse.sections()) {
            let (name, data) = (section.name().unwrap(), section.data().unwrap());
            let loaded = matches!(section.flags(), object::SectionFlags::Elf { sh_flags } if sh_flags & SHF_ALLOC != 0);
            // (`.debug_gdb_scripts` is loaded: read.)
            if name.starts_with(".debug_") && !loaded {
                debug += data.len();
                assert!(kept.data().unwrap().iter().all(|&b| b == 0), "{name} is not read");
            } else {
                assert_eq!(kept.data().unwrap(), data, "{name} is read as it is");
            }
        }
        assert!(debug > 0, "a test binary is built with debug information");
        assert!(image.read <= whole.len() - debug, "{} bytes read of {}", image.read, whole.len());
    }

    /// A file without section headers (only its segments say what it holds) is read whole.
    #[test]
    fn a_file_without_sections_is_read_whole() {
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        bytes[0x28..0x30].fill(0); // e_shoff
        bytes[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
        let path = std::env::temp_dir().join(format!("dprobe-no-sections-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let image = read_all_but_debug_info(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        let image = image.unwrap();
        assert_eq!((image.read, image.bytes), (bytes.len(), bytes));
    }

    #[test]
    fn what_is_not_an_elf_file_is_refused() {
        assert!(read_sections("/proc/self/status", |_| true).is_none());
        assert!(read_sections("/no/such/file", |_| true).is_none());
    }
}
