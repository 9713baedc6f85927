//! What dprobe reads of an object file, read once per version of the file.
//!
//! The ptrace engine resolves each probe against the process's maps as they are when it places
//! it, and a glob such as `libc:*` places two thousand probes: without a cache, each one read
//! and parsed libc (and, for an indirect function, libc's debug file) again. A file is known
//! by its path, device, inode, size and modification time, so a rebuilt or replaced file is
//! read afresh. The set of symbols of a whole process is kept too, for as long as the same
//! versions of the same files are mapped at the same addresses.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, OnceLock};

use object::{Object, ObjectSection, ObjectSegment, SectionFlags, SectionKind, SegmentFlags};

use dprobe_arch::{Addr, BranchCandidates, CodeBranches, CodeRegion, FunctionStarts, LandingPad};

use crate::file_bytes::FileBytes;
use crate::landing_pads::landing_pads;
use crate::sparse_read::{read_all_but_debug_info, Image};
use crate::symbols::{
    function_starts, plt_sections, read_symbols, sort_functions, Function, NameIndex, Symbols, STATIC_PROBE_PREFIX,
};

/// One version of one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub(crate) path: Arc<str>,
    pub(crate) dev: u64,
    pub(crate) inode: u64,
    pub(crate) size: u64,
    pub(crate) modified_ns: i128,
}

impl FileKey {
    /// The version of the file at `path`; `None` unless it is a regular file (a device or a
    /// pipe a process maps, `/dev/zero` say, is never read: its reading may never end).
    pub(crate) fn of(path: &str) -> Option<FileKey> {
        let m = std::fs::metadata(path).ok().filter(std::fs::Metadata::is_file)?;
        let modified_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        Some(FileKey { path: Arc::from(path), dev: m.dev(), inode: m.ino(), size: m.size(), modified_ns })
    }
}

/// The symbols of an object file at its link-time addresses.
#[derive(Debug)]
pub(crate) struct ObjectFile {
    pub(crate) key: FileKey,
    /// Its functions (`bias` 0), in address order (see `symbols::sort_functions`).
    pub(crate) functions: Vec<Function>,
    /// Where each name is in `functions`.
    pub(crate) names: Arc<NameIndex>,
    /// Its PLT sections: link-time start and end.
    pub(crate) plt: Vec<(u64, u64)>,
    /// The page-aligned link-time address of its loadable segment at file offset 0.
    pub(crate) first_segment: Option<u64>,
    /// Its bytes, all but its DWARF: those its symbols were read from where they were up to
    /// [`KEPT_FROM_THE_FIRST_READ`], else read again when first asked for (indirect functions
    /// and the jump check need them).
    pub(crate) bytes: OnceLock<Option<FileBytes>>,
    /// The functions its separate debug file names (by build-id), read when first asked for.
    pub(crate) debug_functions: OnceLock<Vec<Function>>,
    /// Its executable sections, read when first asked for.
    pub(crate) code: OnceLock<Option<Vec<CodeSection>>>,
    /// Its function starts (those its debug file names too), gathered when first asked for.
    pub(crate) starts: OnceLock<FunctionStarts>,
    /// Where branches with a long immediate could land in its code, indexed when first asked
    /// for; `None` when the file cannot be read again.
    pub(crate) candidates: OnceLock<Option<BranchCandidates>>,
    /// The landing pads of its exceptions, read when first asked for.
    pub(crate) pads: OnceLock<Option<CodeBranches>>,
}

/// The most bytes of a file (its DWARF left out) that [`ObjectFile::read`] keeps (libc is 2 MB,
/// libstdc++ 2.3 MB).
const KEPT_FROM_THE_FIRST_READ: usize = 4 << 20;

/// What lands inside a window of an object's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntoWindow {
    /// Nothing: a jump may be written over it.
    Nothing,
    /// A direct branch, `(from, target)` (the lowest in address order).
    Branch(Addr, Addr),
    /// An exception's landing pad.
    LandingPad(LandingPad),
}

impl ObjectFile {
    /// Read the file, keeping its bytes where `keep` (and no more than
    /// [`KEPT_FROM_THE_FIRST_READ`] of them were read).
    fn read(key: FileKey, keep: bool) -> Option<ObjectFile> {
        let Image { bytes: data, read } = read_all_but_debug_info(&key.path)?;
        let file = object::File::parse(&*data).ok()?;
        let first_segment = file.segments().find(|s| s.file_range().0 == 0).map(|s| s.address() & !0xfff);
        let object = key.path.clone();
        let mut functions = Vec::new();
        read_symbols(&object, &data, &data, 0, &mut functions);
        let sites = static_probe_sites(&object, &data, &functions);
        functions.extend(sites);
        let plt = plt_sections(&data);
        let file = ObjectFile::of_functions(key, functions, plt, first_segment);
        // A file the size of a C library keeps the bytes read: its code is what the jump check
        // reads next, in a program that probes it (the agent's own probes are in libc).
        // Larger ones are read again when needed, and only then kept. (The DWARF of a program
        // built with debug information is never read: it is most of such a file.)
        if keep && read <= KEPT_FROM_THE_FIRST_READ {
            let _ = file.bytes.set(Some(FileBytes::new(data)));
        }
        Some(file)
    }

    /// The object file of version `key` with these functions (sorted and indexed by name
    /// here), PLT sections and first segment; the rest is read when first asked for.
    pub(crate) fn of_functions(
        key: FileKey,
        mut functions: Vec<Function>,
        plt: Vec<(u64, u64)>,
        first_segment: Option<u64>,
    ) -> ObjectFile {
        sort_functions(&mut functions);
        let names = Arc::new(NameIndex::of(&functions));
        ObjectFile {
            key,
            functions,
            names,
            plt,
            first_segment,
            bytes: OnceLock::new(),
            debug_functions: OnceLock::new(),
            code: OnceLock::new(),
            starts: OnceLock::new(),
            candidates: OnceLock::new(),
            pads: OnceLock::new(),
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> Arc<str> {
        self.key.path.clone()
    }

    /// The file's bytes (the version the symbols were read from, unless it changed since).
    pub(crate) fn bytes(&self) -> Option<FileBytes> {
        self.bytes
            .get_or_init(|| read_all_but_debug_info(&self.key.path).map(|image| FileBytes::new(image.bytes)))
            .clone()
    }

    /// The functions named by its separate debug file under `/usr/lib/debug/.build-id/`
    /// (stripped libraries keep their local functions' names only there), at link-time
    /// addresses, with bounds and file offsets from the object itself. Empty when none.
    pub(crate) fn debug_functions(&self) -> &[Function] {
        self.debug_functions.get_or_init(|| {
            let Some(data) = self.bytes() else { return Vec::new() };
            let Some(debug) = debug_file_of(&data) else { return Vec::new() };
            let mut out = Vec::new();
            read_symbols(&self.key.path, &debug, &data, 0, &mut out);
            out.retain(|f| !f.ifunc);
            out
        })
    }
}

impl ObjectFile {
    /// What lands on bytes +1..+`len`-1 of the `len` bytes at link-time address `at` of its
    /// code: a direct branch from anywhere in its executable sections (decoded from each of
    /// its functions' starts), else a landing pad of its exceptions. `None` when the file
    /// cannot be read again, or its unwind tables cannot be (its landing pads are unknown).
    pub(crate) fn what_lands_in(&self, at: Addr, len: u64) -> Option<IntoWindow> {
        let data = self.bytes()?;
        let regions = self.regions(&data)?;
        let candidates = self.candidates.get_or_init(|| Some(BranchCandidates::new(&regions))).as_ref()?;
        let branch = candidates.into_range(&regions, self.starts(), at, len);
        if let Some((from, target)) = branch {
            return Some(IntoWindow::Branch(from, target));
        }
        let pads = self.pads(&data)?;
        Some(pads.landing_pad_in(at, len).map_or(IntoWindow::Nothing, IntoWindow::LandingPad))
    }

    /// Its exceptions' landing pads, read from `data` (its bytes) when first asked for.
    fn pads(&self, data: &[u8]) -> Option<&CodeBranches> {
        self.pads.get_or_init(|| Some(CodeBranches::default().with_landing_pads(landing_pads(data)?))).as_ref()
    }

    /// Everything the jump check reads of its code, made now: its sections, function starts,
    /// branch candidates and landing pads (to hand over to another process, `handover.rs`).
    pub(crate) fn analyse_code(&self) {
        let Some(data) = self.bytes() else { return };
        let Some(regions) = self.regions(&data) else { return };
        self.candidates.get_or_init(|| Some(BranchCandidates::new(&regions)));
        self.starts();
        self.pads(&data);
    }

    /// Its executable sections, as regions of `data` (its bytes).
    fn regions<'a>(&self, data: &'a [u8]) -> Option<Vec<CodeRegion<'a>>> {
        let sections = self.code.get_or_init(|| code_sections(data)).as_ref()?;
        Some(sections.iter().map(|s| (Addr(s.address), s.bytes(data))).collect())
    }

    /// Its function starts, those its debug file names included. A static probe's site is an
    /// instruction inside a function, not a function's start: a branch to it is kept.
    fn starts(&self) -> &FunctionStarts {
        self.starts.get_or_init(|| {
            let own = self.functions.iter().filter(|f| !f.name.starts_with(STATIC_PROBE_PREFIX));
            let mut starts: Vec<Addr> = own.map(|f| f.start).collect();
            match self.debug_functions.get() {
                Some(debug) => starts.extend(debug.iter().map(|f| f.start)),
                None => starts.extend(self.debug_starts()),
            }
            FunctionStarts::new(&starts)
        })
    }

    /// The starts of the functions [`ObjectFile::debug_functions`] would name, read without
    /// their names (a program that probes none of them by name never needs those).
    fn debug_starts(&self) -> Vec<Addr> {
        let Some(data) = self.bytes() else { return Vec::new() };
        let Some(debug) = debug_file_of(&data) else { return Vec::new() };
        function_starts(&debug, &data)
    }
}

/// One executable section of an object file: its link-time address and where it is in the
/// file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeSection {
    /// Link-time address.
    pub(crate) address: u64,
    /// File offset.
    pub(crate) offset: u64,
    /// Size in bytes.
    pub(crate) size: u64,
}

impl CodeSection {
    /// Its bytes in `data`, the file's.
    pub(crate) fn bytes<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let start = (self.offset as usize).min(data.len());
        &data[start..(start + self.size as usize).min(data.len())]
    }
}

/// The executable sections (`SHF_EXECINSTR`, with bytes in the file) of the object file
/// whose bytes are `data`; for a file without section headers, its executable loadable
/// segments.
pub(crate) fn code_sections(data: &[u8]) -> Option<Vec<CodeSection>> {
    const SHF_EXECINSTR: u64 = 0x4;
    const PF_X: u32 = 0x1;
    let file = object::File::parse(data).ok()?;
    let sections: Vec<CodeSection> = file
        .sections()
        .filter(|s| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & SHF_EXECINSTR != 0))
        .filter(|s| s.kind() != SectionKind::UninitializedData)
        .filter_map(|s| {
            let (offset, size) = s.file_range()?;
            Some(CodeSection { address: s.address(), offset, size })
        })
        .collect();
    if file.sections().next().is_some() {
        return Some(sections);
    }
    let segments = file
        .segments()
        .filter(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
        .map(|s| {
            let (offset, size) = s.file_range();
            CodeSection { address: s.address(), offset, size }
        })
        .collect();
    Some(segments)
}

/// The sites of the static probes (`<sys/sdt.h>`) of an object that no function symbol covers,
/// as functions of one instruction: in a stripped program its static probes are all such.
/// A site is a one-byte `nop` the compiler emitted for the probe, which its note points at, so
/// it is an instruction's start without a function around it to decode from. Each is named
/// `usdt:PROVIDER:NAME` (no symbol has a `:` in its name), found by its address only.
fn static_probe_sites(object: &Arc<str>, data: &[u8], functions: &[Function]) -> Vec<Function> {
    const NOP: u8 = 0x90;
    let Ok(probes) = crate::usdt::usdt_probes(object, data) else { return Vec::new() };
    probes
        .into_iter()
        .filter(|p| !functions.iter().any(|f| f.contains(Addr(p.pc))))
        .filter(|p| usize::try_from(p.file_offset).ok().and_then(|o| data.get(o)) == Some(&NOP))
        .map(|p| Function {
            name: format!("{STATIC_PROBE_PREFIX}{}:{}", p.provider, p.name).into(),
            demangled: None,
            version: None,
            default_version: false,
            start: Addr(p.pc),
            size: 1,
            object: object.clone(),
            bias: 0,
            file_offset: p.file_offset,
            ifunc: false,
        })
        .collect()
}

/// The bytes of the separate debug file of the object whose bytes are `data`, found by its
/// build-id.
fn debug_file_of(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    let hex: String = file.build_id().ok()??.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/usr/lib/debug/.build-id/{}/{}.debug", hex.get(..2)?, hex.get(2..)?);
    // Its symbol tables and their strings only (the DWARF is most of it); the dynamic ones
    // and their versions are empty in a debug file, but read as they are.
    const SYMBOL_TABLES: [u32; 6] = [2, 3, 11, 0x6fff_fffd, 0x6fff_fffe, 0x6fff_ffff];
    crate::sparse_read::read_sections(&path, |s| SYMBOL_TABLES.contains(&s.kind)).map(|image| image.bytes)
}

/// The object file at `path`, read now if this version of it was not read before; `None`
/// when it cannot be read or is not an object file.
pub(crate) fn object_file(path: &str) -> Option<Arc<ObjectFile>> {
    object_file_keeping(path, true)
}

/// [`object_file`], without keeping the bytes of a file read now (whose symbols alone are
/// wanted: a file handed over to another process, `handover.rs`); they are read again if its
/// code is asked for.
pub(crate) fn object_file_symbols(path: &str) -> Option<Arc<ObjectFile>> {
    object_file_keeping(path, false)
}

fn object_file_keeping(path: &str, keep: bool) -> Option<Arc<ObjectFile>> {
    let key = FileKey::of(path)?;
    let files = files();
    if let Some(f) = files.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Some(f.clone());
    }
    // Read outside the lock: another thread may read the same file meanwhile, which costs
    // time, not correctness.
    let f = Arc::new(ObjectFile::read(key.clone(), keep)?);
    files.lock().unwrap_or_else(|e| e.into_inner()).insert(key, f.clone());
    Some(f)
}

/// The object files read (or taken over from another process, `handover.rs`), by version.
fn files() -> &'static Mutex<HashMap<FileKey, Arc<ObjectFile>>> {
    static FILES: OnceLock<Mutex<HashMap<FileKey, Arc<ObjectFile>>>> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// The object file of this version of its file read already, if it was.
pub(crate) fn object_file_read(key: &FileKey) -> Option<Arc<ObjectFile>> {
    files().lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
}

/// Forget the object files read at `path` (a test's fresh start).
#[cfg(test)]
pub(crate) fn forget_object_file(path: &str) {
    files().lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| &*key.path != path);
}

/// Keep `file` as this version's, unless one was read already.
pub(crate) fn keep_object_file(file: ObjectFile) {
    files().lock().unwrap_or_else(|e| e.into_inner()).entry(file.key.clone()).or_insert_with(|| Arc::new(file));
}

/// Forget every object file read or taken over, and every symbol set kept: their memory (the
/// files' bytes, the images another process handed over, the analysis of their code) is given
/// back once the last user lets go of it. For a process that read them for a while only:
/// dprobe's agent, at the end of a session in the program it traced.
pub fn forget_object_files() {
    let files = std::mem::take(&mut *files().lock().unwrap_or_else(|e| e.into_inner()));
    let kept = std::mem::take(&mut *kept().lock().unwrap_or_else(|e| e.into_inner()));
    let last = crate::window_branches::forget_last_object();
    // Dropped outside the locks.
    drop((files, kept, last));
}

/// How many processes' symbol sets are kept (a traced program and the children it forks).
const PROCESSES_KEPT: usize = 8;

/// The symbol sets of the objects last loaded, by the versions and biases of their objects.
type Kept = Vec<(Vec<(FileKey, u64)>, Symbols)>;

fn kept() -> &'static Mutex<Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

/// The symbols of the objects `loaded` (each with its bias), built by `build` unless the same
/// versions of the same files at the same addresses were loaded recently.
pub(crate) fn symbols_of(loaded: &[(Arc<ObjectFile>, u64)], build: impl FnOnce() -> Symbols) -> Symbols {
    let key: Vec<(FileKey, u64)> = loaded.iter().map(|(f, bias)| (f.key.clone(), *bias)).collect();
    let kept = kept();
    if let Some((_, s)) = kept.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| *k == key) {
        return s.clone();
    }
    let symbols = build();
    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() == PROCESSES_KEPT {
        kept.remove(0);
    }
    kept.push((key, symbols.clone()));
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only regular files are object files: a device is never read (`/dev/zero`'s reading
    /// would never end), nor a directory.
    #[test]
    fn only_regular_files_have_a_version() {
        assert!(FileKey::of("/dev/zero").is_none());
        assert!(FileKey::of("/dev/null").is_none());
        assert!(FileKey::of("/usr").is_none());
        assert!(FileKey::of("/proc/self/exe").is_some(), "a link to a regular file is followed");
    }

    /// The candidates' check finds what the whole decoding finds, over libc: at each function's start, one and two bytes in, and over a return probe's
    /// longer exit window.
    #[test]
    fn libc_s_windows_scanned_and_decoded_agree() {
        let path = crate::maps::read_maps()
            .unwrap()
            .into_iter()
            .filter_map(|m| m.path)
            .find(|p| p.contains("/libc.so"))
            .expect("this test links libc");
        let file = object_file(&path).unwrap();
        let data = file.bytes().unwrap();
        let regions = file.regions(&data).unwrap();
        let named: Vec<Addr> = file.debug_functions().iter().map(|f| f.start).collect();
        assert!(named.len() > 1_000, "libc's debug file is installed: {} functions", named.len());
        assert_eq!(file.debug_starts(), named, "the debug file's starts, read without names");
        let whole = CodeBranches::decode_sorted(&regions, file.starts());
        let mut candidates = BranchCandidates::new(&regions);
        assert!(whole.len() > 10_000, "libc's branches: {}", whole.len());
        let (mut windows, mut landed) = (0, 0);
        for f in file.functions.iter().filter(|f| f.size >= 5).step_by(3) {
            for (at, len) in [(f.start, 5), (Addr(f.start.0 + 1), 5), (Addr(f.start.0 + 2), 5), (f.start, 12)] {
                let expected = whole.into_range(at, len);
                if !candidates.checks_in_place() {
                    // Each check in place, never the whole decoding it falls back on.
                    candidates = BranchCandidates::new(&regions);
                }
                assert_eq!(candidates.into_range(&regions, file.starts(), at, len), expected, "{} at {at:?}", f.name);
                windows += 1;
                landed += usize::from(expected.is_some());
            }
        }
        assert!(windows > 2_000 && landed > 10, "{windows} windows, {landed} with a branch into them");
    }
}
