//! The libraries an ELF object names as needed (`DT_NEEDED`): the dynamic loader maps them,
//! and the ones they need in turn, before the program starts, and never unloads them.

use std::path::Path;

use object::read::elf::{Dyn, FileHeader};
use object::{elf, Endianness, ReadRef};

/// The `DT_NEEDED` names of the 64-bit ELF file at `path`, in order: none for a file without
/// a dynamic section (a static program), an error for one that cannot be read or parsed. Only
/// the headers, the dynamic section and its strings are read.
pub fn needed_libraries(path: &Path) -> std::io::Result<Vec<String>> {
    let file = object::ReadCache::new(std::fs::File::open(path)?);
    needed_in(&file).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn needed_in<'data, R: ReadRef<'data>>(data: R) -> Result<Vec<String>, String> {
    let parse = |e: object::Error| e.to_string();
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(parse)?;
    let endian = header.endian().map_err(parse)?;
    let sections = header.sections(endian, data).map_err(parse)?;
    let Some((dynamic, strings_at)) = sections.dynamic(endian, data).map_err(parse)? else { return Ok(Vec::new()) };
    let strings = sections.strings(endian, data, strings_at).map_err(parse)?;
    dynamic
        .iter()
        .filter(|d| d.tag32(endian) == Some(elf::DT_NEEDED))
        .map(|d| {
            let name = u32::try_from(d.d_val(endian)).ok().and_then(|at| strings.get(at).ok());
            name.map(|name| String::from_utf8_lossy(name).into_owned())
                .ok_or_else(|| "a DT_NEEDED name out of its table".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_program_needs_the_c_library() {
        let needed = needed_libraries(Path::new("/proc/self/exe")).unwrap();
        assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert_eq!(needed_in(&b"#!/bin/sh\n"[..]).map_err(|_| ()), Err(()));
        let err = needed_libraries(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
