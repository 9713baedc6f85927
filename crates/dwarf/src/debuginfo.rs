//! Finding and loading a binary's DWARF, wherever it was put.
//!
//! Distributions strip the debug information out of what they install and ship it apart; a
//! developer's build usually keeps it inside. The places are tried in the order gdb and
//! `perf probe` use:
//!
//! 1. the binary itself (`.debug_info` present and not stripped);
//! 2. `ROOT/.build-id/xx/rest.debug`, where `xxrest` is the binary's GNU build-id in hex and
//!    `ROOT` is [`Search::debug_root`] (`/usr/lib/debug`); the file's own build-id must match;
//! 3. the file named by `.gnu_debuglink`, next to the binary, in its `.debug/` directory, and
//!    under `ROOT` followed by the binary's directory; the file's CRC-32 must be the one the
//!    link records;
//! 4. a debuginfod client's cache (`$DEBUGINFOD_CACHE_PATH`, else
//!    `$XDG_CACHE_HOME/debuginfod_client`, else `~/.cache/debuginfod_client`), as
//!    `CACHE/<build-id>/debuginfo`. Nothing is ever downloaded.
//!
//! A debug file made by `dwz` names a supplementary file (`.gnu_debugaltlink`) that holds the
//! entries it shares with other packages; it is loaded too when it can be found.
//!
//! **Addresses.** Every address in the [`gimli::Dwarf`] is a link-time virtual address of the
//! binary, the same as its ELF symbols' values (a separate debug file keeps the binary's
//! addresses). A run-time address `a` in a process is `a - bias` in DWARF terms, with the bias
//! of the object's mapping (`dprobe_sym::Function::bias`); [`DebugInfo::file_offset`] and
//! [`DebugInfo::address_of_file_offset`] translate to and from file offsets through the
//! binary's `PT_LOAD` segments.
//!
//! Call-frame information always comes from the binary (`.eh_frame`), never from the debug
//! file, whose `.eh_frame` is usually emptied (`NOBITS`); see [`DebugInfo::call_frames`].

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSegment};

use crate::DwarfError;

/// The reader every DWARF section is read through: owned bytes, cheap to clone, `Send`.
pub type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// Where the DWARF of a binary was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// In the binary itself.
    Embedded,
    /// `ROOT/.build-id/xx/rest.debug`.
    BuildId(PathBuf),
    /// The file `.gnu_debuglink` names, with a matching CRC.
    DebugLink(PathBuf),
    /// A debuginfod client's local cache.
    DebuginfodCache(PathBuf),
}

impl Origin {
    /// The file that holds the DWARF, or `None` for the binary itself.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::Embedded => None,
            Origin::BuildId(p) | Origin::DebugLink(p) | Origin::DebuginfodCache(p) => Some(p),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Embedded => write!(f, "in the binary"),
            Origin::BuildId(p) => write!(f, "by build-id in {}", p.display()),
            Origin::DebugLink(p) => write!(f, "through .gnu_debuglink in {}", p.display()),
            Origin::DebuginfodCache(p) => write!(f, "in the debuginfod cache {}", p.display()),
        }
    }
}

/// Where to look for separate debug files.
#[derive(Clone, Debug)]
pub struct Search {
    /// The root of the system's debug files (`/usr/lib/debug`).
    pub debug_root: PathBuf,
    /// A debuginfod client's cache directory, if any (looked in, never filled).
    pub debuginfod_cache: Option<PathBuf>,
}

impl Default for Search {
    /// `/usr/lib/debug` and the debuginfod cache the environment names (see the module doc).
    fn default() -> Self {
        Search { debug_root: PathBuf::from("/usr/lib/debug"), debuginfod_cache: debuginfod_cache_from_env() }
    }
}

fn debuginfod_cache_from_env() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("DEBUGINFOD_CACHE_PATH") {
        return Some(p);
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return Some(p.join("debuginfod_client"));
    }
    var("HOME").map(|h| h.join(".cache/debuginfod_client"))
}

impl Search {
    /// Every file that would be tried for `binary`, in order (for "no DWARF" messages).
    pub fn places(&self, binary: &Path) -> Result<Vec<PathBuf>, DwarfError> {
        let data = read(binary)?;
        let file = parse(binary, &data)?;
        let mut places = vec![binary.to_path_buf()];
        places.extend(self.build_id_path(&file));
        places.extend(self.debuglink_paths(binary, &file).into_iter().map(|(p, _)| p));
        places.extend(self.debuginfod_path(&file));
        Ok(places)
    }

    fn build_id_path(&self, file: &object::File<'_>) -> Option<PathBuf> {
        let id = hex(file.build_id().ok()??);
        (id.len() > 2).then(|| self.debug_root.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..])))
    }

    fn debuglink_paths(&self, binary: &Path, file: &object::File<'_>) -> Vec<(PathBuf, u32)> {
        let Ok(Some((name, crc))) = file.gnu_debuglink() else { return Vec::new() };
        let name = Path::new(std::str::from_utf8(name).unwrap_or_default());
        if name.as_os_str().is_empty() {
            return Vec::new();
        }
        let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
        let dir = binary.parent().unwrap_or(Path::new("/"));
        let under_root = self.debug_root.join(dir.strip_prefix("/").unwrap_or(dir));
        [dir.join(name), dir.join(".debug").join(name), under_root.join(name)]
            .into_iter()
            .filter(|p| *p != binary)
            .map(|p| (p, crc))
            .collect()
    }

    fn debuginfod_path(&self, file: &object::File<'_>) -> Option<PathBuf> {
        let id = hex(file.build_id().ok()??);
        Some(self.debuginfod_cache.as_ref()?.join(id).join("debuginfo"))
    }
}

/// A binary's DWARF, loaded, with the binary's call-frame information and segments.
pub struct DebugInfo {
    dwarf: gimli::Dwarf<Reader>,
    origin: Origin,
    binary: PathBuf,
    build_id: Option<Vec<u8>>,
    segments: Vec<Segment>,
    call_frames: Option<CallFrames>,
}

/// A `PT_LOAD` segment: where its bytes are in the file and in memory (link-time).
#[derive(Clone, Copy, Debug)]
struct Segment {
    address: u64,
    file_offset: u64,
    file_size: u64,
}

/// The binary's `.eh_frame` and the base addresses its pointers are relative to.
#[derive(Clone)]
pub struct CallFrames {
    /// The section.
    pub eh_frame: gimli::EhFrame<Reader>,
    /// Its bases (`.eh_frame`, `.text`, `.got` addresses).
    pub bases: gimli::BaseAddresses,
}

impl fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugInfo").field("binary", &self.binary).field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl DebugInfo {
    /// The DWARF of `binary`, searched for in the default places ([`Search::default`]).
    /// `Ok(None)` when there is none anywhere; an error when the binary (or a debug file that
    /// matched) cannot be read or parsed.
    pub fn load(binary: impl AsRef<Path>) -> Result<Option<DebugInfo>, DwarfError> {
        Self::load_with(binary, &Search::default())
    }

    /// The DWARF of `binary`, searched for as `search` says.
    pub fn load_with(binary: impl AsRef<Path>, search: &Search) -> Result<Option<DebugInfo>, DwarfError> {
        let binary = binary.as_ref();
        let data = read(binary)?;
        let file = parse(binary, &data)?;
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let Some((origin, debug_data)) = find(binary, &file, &data, build_id.as_deref(), search) else {
            return Ok(None);
        };
        let debug_path = origin.file().unwrap_or(binary).to_path_buf();
        let debug_file = parse(&debug_path, &debug_data)?;
        let mut dwarf = load_sections(&debug_path, &debug_file)?;
        if let Some(sup) = supplementary(&debug_path, &debug_file)? {
            dwarf.set_sup(sup);
        }
        let segments = file
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment { address: s.address(), file_offset, file_size }
            })
            .collect();
        let call_frames = call_frames(&file)?;
        Ok(Some(DebugInfo { dwarf, origin, binary: binary.to_path_buf(), build_id, segments, call_frames }))
    }

    /// The DWARF sections (addresses are the binary's link-time addresses).
    pub fn dwarf(&self) -> &gimli::Dwarf<Reader> {
        &self.dwarf
    }

    /// The DWARF sections, kept by a reader that outlives this (an address-to-line context).
    pub fn into_dwarf(self) -> gimli::Dwarf<Reader> {
        self.dwarf
    }

    /// Where it was found.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The binary it describes.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The binary's GNU build-id, if it has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The binary's `.eh_frame`, if it has one.
    pub fn call_frames(&self) -> Option<&CallFrames> {
        self.call_frames.as_ref()
    }

    /// The file offset of link-time address `address`, if a `PT_LOAD` segment's file bytes
    /// hold it.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| address >= s.address && address - s.address < s.file_size)
            .map(|s| s.file_offset + (address - s.address))
    }

    /// The link-time address of file offset `offset`, if a `PT_LOAD` segment maps it.
    pub fn address_of_file_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.file_offset && offset - s.file_offset < s.file_size)
            .map(|s| s.address + (offset - s.file_offset))
    }
}

/// The first place that holds DWARF for the binary, with that file's bytes.
fn find(
    binary: &Path,
    file: &object::File<'_>,
    data: &Arc<[u8]>,
    build_id: Option<&[u8]>,
    search: &Search,
) -> Option<(Origin, Arc<[u8]>)> {
    if has_dwarf(file) {
        return Some((Origin::Embedded, data.clone()));
    }
    if let Some(path) = search.build_id_path(file) {
        if let Some(d) = candidate(&path, |f| build_id.is_some() && f.build_id().ok().flatten() == build_id) {
            return Some((Origin::BuildId(path), d));
        }
    }
    for (path, crc) in search.debuglink_paths(binary, file) {
        let Ok(d) = std::fs::read(&path) else { continue };
        if crc32fast::hash(&d) != crc {
            continue;
        }
        let d: Arc<[u8]> = d.into();
        if object::File::parse(&*d).is_ok_and(|f| has_dwarf(&f)) {
            return Some((Origin::DebugLink(path), d));
        }
    }
    if let Some(path) = search.debuginfod_path(file) {
        if let Some(d) = candidate(&path, |_| true) {
            return Some((Origin::DebuginfodCache(path), d));
        }
    }
    None
}

/// `path`'s bytes if it exists, is ELF, holds DWARF and passes `accept`.
fn candidate(path: &Path, accept: impl Fn(&object::File<'_>) -> bool) -> Option<Arc<[u8]>> {
    let d: Arc<[u8]> = std::fs::read(path).ok()?.into();
    let ok = object::File::parse(&*d).is_ok_and(|f| has_dwarf(&f) && accept(&f));
    ok.then_some(d)
}

/// Whether the file has a `.debug_info` with bytes in it (a stripped binary may keep the
/// section header; a debug file keeps it with data).
fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.kind() != object::SectionKind::UninitializedData && s.size() > 0)
}

fn load_sections(path: &Path, file: &object::File<'_>) -> Result<gimli::Dwarf<Reader>, DwarfError> {
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    gimli::Dwarf::load(|id| -> Result<Reader, DwarfError> {
        let data = match file.section_by_name(id.name()) {
            Some(s) if s.kind() != object::SectionKind::UninitializedData => s
                .uncompressed_data()
                .map_err(|e| DwarfError::Parse { path: path.to_path_buf(), reason: format!("{}: {e}", id.name()) })?,
            _ => Cow::Borrowed(&[][..]),
        };
        Ok(gimli::EndianArcSlice::new(Arc::from(&*data), endian))
    })
}

/// The `dwz` supplementary file named by `.gnu_debugaltlink`, if there is one and it can be
/// found (an absolute path, or relative to the debug file's directory).
fn supplementary(path: &Path, file: &object::File<'_>) -> Result<Option<gimli::Dwarf<Reader>>, DwarfError> {
    let Ok(Some((name, id))) = file.gnu_debugaltlink() else { return Ok(None) };
    let name = Path::new(std::str::from_utf8(name).unwrap_or_default());
    let sup_path = path.parent().unwrap_or(Path::new("/")).join(name);
    let Some(d) = candidate(&sup_path, |f| f.build_id().ok().flatten() == Some(id)) else { return Ok(None) };
    let sup = parse(&sup_path, &d)?;
    load_sections(&sup_path, &sup).map(Some)
}

fn call_frames(file: &object::File<'_>) -> Result<Option<CallFrames>, DwarfError> {
    let Some(section) = file.section_by_name(".eh_frame") else { return Ok(None) };
    if section.kind() == object::SectionKind::UninitializedData {
        return Ok(None);
    }
    let data = section.data().unwrap_or_default();
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let mut eh_frame = gimli::EhFrame::from(gimli::EndianArcSlice::new(Arc::from(data), endian));
    eh_frame.set_address_size(if file.is_64() { 8 } else { 4 });
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    Ok(Some(CallFrames { eh_frame, bases }))
}

fn read(path: &Path) -> Result<Arc<[u8]>, DwarfError> {
    std::fs::read(path).map(Arc::from).map_err(|e| DwarfError::Read { path: path.to_path_buf(), error: e })
}

fn parse<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, DwarfError> {
    object::File::parse(data).map_err(|e| DwarfError::Parse { path: path.to_path_buf(), reason: e.to_string() })
}

/// Lower-case hex, as build-id paths spell it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
