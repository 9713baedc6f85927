//! An ELF file read for its symbol tables alone.
//!
//! A separate debug file is mostly DWARF: libc's is 4 MB, of which its symbol and string
//! tables are a sixth. Reading it whole costs its every page twice (the page cache's and a
//! fresh buffer's), at every start of a program traced with the agent. The image built here
//! has the file's length and layout, so that an ELF parser reads it as the file, but holds
//! only the headers, the section headers, and the sections `wanted` keeps: the rest reads as
//! zeros (the buffer's untouched pages cost nothing).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// ELF64 header fields this reader needs (little-endian x86-64 objects).
const EHDR_LEN: usize = 64;
const SHDR_LEN: usize = 64;
const SHT_NOBITS: u32 = 8;

/// The file at `path` with only the sections whose type `wanted` accepts read into place (and
/// the section names' table); `None` when it cannot be read, or is not a 64-bit
/// little-endian ELF file whose headers lie inside it.
pub(crate) fn read_sections(path: &str, wanted: impl Fn(u32) -> bool) -> Option<Vec<u8>> {
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
    if shentsize != SHDR_LEN {
        return None;
    }
    let mut image = vec![0u8; len];
    let read_into = |image: &mut [u8], offset: usize, size: usize| -> Option<()> {
        let end = offset.checked_add(size).filter(|&end| end <= len)?;
        file.read_exact_at(&mut image[offset..end], offset as u64).ok()
    };
    read_into(&mut image, 0, EHDR_LEN)?;
    read_into(&mut image, phoff, phentsize.checked_mul(phnum)?)?;
    read_into(&mut image, shoff, SHDR_LEN.checked_mul(shnum)?)?;
    let sections: Vec<(u32, usize, usize)> = (0..shnum)
        .map(|i| {
            let h = &image[shoff + i * SHDR_LEN..shoff + (i + 1) * SHDR_LEN];
            let kind = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let offset = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
            let size = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
            (kind, usize::try_from(offset).unwrap_or(usize::MAX), usize::try_from(size).unwrap_or(usize::MAX))
        })
        .collect();
    for (i, &(kind, offset, size)) in sections.iter().enumerate() {
        if kind != SHT_NOBITS && (i == shstrndx || wanted(kind)) {
            read_into(&mut image, offset, size)?;
        }
    }
    Some(image)
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
        let sparse = read_sections(path, |kind| matches!(kind, SHT_SYMTAB | SHT_STRTAB)).unwrap();
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

    #[test]
    fn what_is_not_an_elf_file_is_refused() {
        assert_eq!(read_sections("/proc/self/status", |_| true), None);
        assert_eq!(read_sections("/no/such/file", |_| true), None);
    }
}
