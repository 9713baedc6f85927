//! One object file as the unwinder needs it, read once: its unwind sections, handed to
//! `framehop` without copying.

use std::ops::{Deref, Range};
use std::sync::Arc;

use framehop::{ExplicitModuleSectionInfo, Module};
use object::{Object, ObjectSection, ObjectSegment};

/// Bytes of a file shared without copying (a section of it).
#[derive(Clone, Default)]
pub(crate) struct Bytes {
    data: Option<Arc<[u8]>>,
    range: Range<usize>,
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.range.clone()],
            None => &[],
        }
    }
}

/// What unwinding through one object needs, at its link-time addresses.
pub(crate) struct ElfFile {
    path: String,
    /// The link-time address of the segment mapped from file offset 0, page-aligned: a
    /// process's mapping of offset 0 minus this is the object's load bias.
    pub link_base: u64,
    sections: ExplicitModuleSectionInfo<Bytes>,
}

impl ElfFile {
    /// Read `path`; `None` when it cannot be read or is no ELF file.
    pub fn read(path: &str) -> Option<ElfFile> {
        let data: Arc<[u8]> = Arc::from(std::fs::read(path).ok()?);
        let file = object::File::parse(&*data).ok()?;
        let link_base = file.segments().find(|s| s.file_range().0 == 0).map(|s| s.address() & !0xfff)?;
        let range_of = |name: &str| {
            let s = file.section_by_name(name)?;
            Some(s.address()..s.address() + s.size())
        };
        let data_of = |name: &str| {
            let s = file.section_by_name(name).filter(|s| s.kind() != object::SectionKind::UninitializedData)?;
            let (offset, size) = s.file_range()?;
            let range = offset as usize..(offset + size) as usize;
            data.get(range.clone())?;
            Some(Bytes { data: Some(data.clone()), range })
        };
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: range_of(".text"),
            text: data_of(".text"),
            got_svma: range_of(".got"),
            eh_frame_svma: range_of(".eh_frame"),
            eh_frame: data_of(".eh_frame"),
            eh_frame_hdr_svma: range_of(".eh_frame_hdr"),
            eh_frame_hdr: data_of(".eh_frame_hdr"),
            debug_frame: data_of(".debug_frame"),
            ..Default::default()
        };
        Some(ElfFile { path: path.to_owned(), link_base, sections })
    }

    /// The object as mapped at `avma` with load bias `bias`, for the unwinder.
    pub fn module(&self, avma: Range<u64>, bias: u64) -> Module<Bytes> {
        Module::new(self.path.clone(), avma, bias, self.sections.clone())
    }
}
