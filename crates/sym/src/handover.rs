//! Per-file work handed over from one process to another.
//!
//! Reading an object file's symbols and indexing its code for the jump check is the same work
//! in every process that maps the same version of the file: the C library's cost 5-6 ms, in
//! each program the agent is loaded into (a traced shell's every `exec`). dprobe has done it
//! once already, so it sends it along: [`export_objects`] writes what it read of some files
//! (their functions, PLT sections, code sections, function starts, branch candidates and
//! landing pads), and [`import_objects`], in the agent, takes each file whose version (path,
//! device, inode, size, modification time) is the one this process sees, as if it had read
//! it itself. The file's bytes are not in the message: the few windows checked read them when
//! needed, from the file, or from an image of it dprobe hands over another way
//! ([`export_objects_with_images`]: a sealed memory file the agent maps, so that no process
//! reads the C library's 2 MB again).
//!
//! The format is this module's own (little-endian words, strings with their length), written
//! and read by the same build of dprobe; whatever does not read back whole and consistent is
//! left out, and that file is read as before.

use std::sync::Arc;

use dprobe_arch::{Addr, BranchCandidates, CodeBranches, FunctionStarts, LandingPad};

#[cfg(test)]
use crate::cache::forget_object_file;
use crate::cache::{
    keep_object_file, object_file, object_file_read, object_file_symbols, CodeSection, FileKey, ObjectFile,
};
use crate::file_bytes::FileBytes;
use crate::symbols::{Function, VersionNames};

/// The format's first word ("dpo2").
const MAGIC: u32 = u32::from_le_bytes(*b"dpo2");

/// One version of an object file (path, device, inode, size, modification time): what an
/// image handed over with [`export_objects_with_images`] holds the bytes of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion(FileKey);

impl FileVersion {
    /// The file's path.
    pub fn path(&self) -> &str {
        &self.0.path
    }
}

/// What this process read of the object files at `paths` (read now where it had not), each
/// with its code analysed for the jump check where `analyse` says so (or where it was
/// already), to hand to another process. Of a file read now and not analysed, only the
/// symbols are kept (a tracer following many programs keeps no copy of their files).
pub fn export_objects(paths: &[&str], analyse: impl Fn(&str) -> bool) -> Vec<u8> {
    export_objects_with_images(paths, analyse, &mut |_, _| None)
}

/// [`export_objects`], where `image` may hand over the bytes of a file analysed (the file as
/// read, of the version it is given: its DWARF left as zeros) another way: the number it returns for them is the one
/// the importer's `images` is asked for ([`import_objects_with_images`]).
pub fn export_objects_with_images(
    paths: &[&str],
    analyse: impl Fn(&str) -> bool,
    image: &mut dyn FnMut(&FileVersion, &FileBytes) -> Option<u32>,
) -> Vec<u8> {
    let read = |p: &&str| if analyse(p) { object_file(p) } else { object_file_symbols(p) };
    let files: Vec<Arc<ObjectFile>> = paths.iter().filter_map(read).collect();
    let mut out = Out(Vec::new());
    out.u32(MAGIC);
    out.u32(files.len() as u32);
    for file in &files {
        let mut number = None;
        if analyse(&file.key.path) {
            file.analyse_code();
            let bytes = file.bytes.get().cloned().flatten();
            number = bytes.and_then(|b| image(&FileVersion(file.key.clone()), &b));
        }
        put_object(&mut out, file, number);
    }
    out.0
}

/// Take over the object files [`export_objects`] wrote in another process, those of the
/// versions this process sees at the same paths and has not read itself: how many.
pub fn import_objects(bytes: &[u8]) -> usize {
    import_objects_with_images(bytes, &mut |_| None)
}

/// [`import_objects`], a file's bytes taken from `images` where the exporter handed an image
/// of them over (its number) and the image is the file's size; the file is read otherwise.
pub fn import_objects_with_images(bytes: &[u8], images: &mut dyn FnMut(u32) -> Option<FileBytes>) -> usize {
    let mut input = In(bytes);
    if input.u32() != Some(MAGIC) {
        return 0;
    }
    let Some(count) = input.u32() else { return 0 };
    let mut taken = 0;
    for _ in 0..count {
        // One that does not read whole ends the reading: what follows it cannot be found.
        let Some((file, number)) = get_object(&mut input) else { break };
        if FileKey::of(&file.key.path).as_ref() == Some(&file.key) && object_file_read(&file.key).is_none() {
            let image = number.and_then(&mut *images).filter(|b| b.len() as u64 == file.key.size);
            if let Some(bytes) = image {
                let _ = file.bytes.set(Some(bytes));
            }
            keep_object_file(file);
            taken += 1;
        }
    }
    taken
}

fn put_object(out: &mut Out, file: &ObjectFile, image: Option<u32>) {
    let key = &file.key;
    out.str(&key.path);
    out.u64(key.dev);
    out.u64(key.inode);
    out.u64(key.size);
    out.u64(key.modified_ns as u64);
    out.u64((key.modified_ns >> 64) as u64);
    out.option(file.first_segment.as_ref(), |out, s| out.u64(*s));
    out.list(&file.plt, |out, (start, end)| {
        out.u64(*start);
        out.u64(*end);
    });
    out.list(&file.functions, put_function);
    out.option(file.debug_functions.get(), |out, f| out.list(f, put_function));
    out.option(file.code.get().and_then(Option::as_ref), |out, sections| {
        out.list(sections, |out, s| {
            out.u64(s.address);
            out.u64(s.offset);
            out.u64(s.size);
        })
    });
    out.option(file.starts.get(), |out, starts| out.list(starts.addresses(), |out, s| out.u64(*s)));
    out.option(file.candidates.get().and_then(Option::as_ref), |out, candidates| {
        let (base, size, buckets, opcodes) = candidates.parts();
        out.u64(base);
        out.u64(size);
        out.list(buckets, |out, b| out.u32(*b));
        out.list(opcodes, |out, o| out.u32(*o));
    });
    out.option(file.pads.get().and_then(Option::as_ref), |out, pads| {
        out.list(pads.pads(), |out, p| {
            out.u64(p.pad.0);
            out.u64(p.calls.0);
        })
    });
    out.option(image.as_ref(), |out, n| out.u32(*n));
}

fn put_function(out: &mut Out, f: &Function) {
    out.str(&f.name);
    out.option(f.demangled.as_ref(), |out, d| out.str(d));
    out.option(f.version.as_ref(), |out, v| out.str(v));
    out.u8(u8::from(f.default_version) | u8::from(f.ifunc) << 1);
    out.u64(f.start.0);
    out.u64(f.size);
    out.u64(f.file_offset);
}

fn get_object(input: &mut In<'_>) -> Option<(ObjectFile, Option<u32>)> {
    let path: Arc<str> = Arc::from(input.str()?);
    let (dev, inode, size) = (input.u64()?, input.u64()?, input.u64()?);
    let modified_ns = (i128::from(input.u64()?) & 0xffff_ffff_ffff_ffff) | i128::from(input.u64()? as i64) << 64;
    let key = FileKey { path: path.clone(), dev, inode, size, modified_ns };
    let first_segment = input.option(In::u64)?;
    let plt = input.list(16, |input| Some((input.u64()?, input.u64()?)))?;
    let mut versions = VersionNames::default();
    let functions = input.list(FUNCTION_BYTES, |input| get_function(input, &path, &mut versions))?;
    let debug_functions =
        input.option(|input| input.list(FUNCTION_BYTES, |input| get_function(input, &path, &mut versions)))?;
    let code = input.option(|input| {
        input.list(24, |input| Some(CodeSection { address: input.u64()?, offset: input.u64()?, size: input.u64()? }))
    })?;
    let starts = input.option(|input| FunctionStarts::from_sorted(input.u64s()?))?;
    let candidates = input.option(|input| {
        let (base, size) = (input.u64()?, input.u64()?);
        let buckets = input.u32s()?;
        let opcodes = input.u32s()?;
        BranchCandidates::from_parts(base, size, buckets, opcodes)
    })?;
    let pads = input.option(|input| {
        let pads = input.list(16, |input| Some(LandingPad { pad: Addr(input.u64()?), calls: Addr(input.u64()?) }))?;
        Some(CodeBranches::default().with_landing_pads(pads))
    })?;
    let image = input.option(In::u32)?;
    // Its bytes are an image's, or read again when the jump check first needs them.
    let file = ObjectFile::of_functions(key, functions, plt, first_segment);
    // (The cells are new: each is set once.)
    if let Some(f) = debug_functions {
        let _ = file.debug_functions.set(f);
    }
    if let Some(c) = code {
        let _ = file.code.set(Some(c));
    }
    if let Some(s) = starts {
        let _ = file.starts.set(s);
    }
    if let Some(c) = candidates {
        let _ = file.candidates.set(Some(c));
    }
    if let Some(p) = pads {
        let _ = file.pads.set(Some(p));
    }
    Some((file, image))
}

/// The fewest bytes a function takes (its name's length, three absent-or-present bytes and
/// its flags, three words).
const FUNCTION_BYTES: usize = 4 + 3 + 24;

fn get_function(input: &mut In<'_>, object: &Arc<str>, versions: &mut VersionNames) -> Option<Function> {
    let name = Arc::from(input.str()?);
    let demangled = input.option(|input| input.str().map(Arc::from))?;
    let version = input.option(|input| input.str().map(|v| versions.of(v)))?;
    let flags = input.u8()?;
    Some(Function {
        name,
        demangled,
        version,
        default_version: flags & 1 != 0,
        start: Addr(input.u64()?),
        size: input.u64()?,
        object: object.clone(),
        bias: 0,
        file_offset: input.u64()?,
        ifunc: flags & 2 != 0,
    })
}

/// The bytes written.
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, put: impl FnOnce(&mut Out, T)) {
        self.u8(u8::from(value.is_some()));
        if let Some(value) = value {
            put(self, value);
        }
    }

    fn list<T>(&mut self, items: &[T], mut put: impl FnMut(&mut Out, &T)) {
        self.u32(items.len() as u32);
        for item in items {
            put(self, item);
        }
    }
}

/// The bytes left to read. Each read is `None` past the end.
struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A list of 32-bit words, read at once.
    fn u32s(&mut self) -> Option<Vec<u32>> {
        let n = self.u32()? as usize;
        let bytes = self.take(n.checked_mul(4)?)?;
        Some(bytes.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("four bytes"))).collect())
    }

    /// A list of 64-bit words, read at once.
    fn u64s(&mut self) -> Option<Vec<u64>> {
        let n = self.u32()? as usize;
        let bytes = self.take(n.checked_mul(8)?)?;
        Some(bytes.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("eight bytes"))).collect())
    }

    /// An optional value: `Some(None)` when absent, `None` when it does not read.
    fn option<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => get(self).map(Some),
            _ => None,
        }
    }

    /// A list of items of at least `least` bytes each: a count the bytes left cannot hold is
    /// refused before anything is allocated for it.
    fn list<T>(&mut self, least: usize, mut get: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.u32()? as usize;
        if n.checked_mul(least)? > self.0.len() {
            return None;
        }
        (0..n).map(|_| get(self)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_path() -> String {
        crate::maps::read_maps()
            .unwrap()
            .into_iter()
            .filter_map(|m| m.path)
            .find(|p| p.contains("/libc.so"))
            .expect("this test links libc")
    }

    /// What is handed over reads back as what was written: every function, section, start,
    /// candidate and landing pad of the C library (analysed), and the same answers to the
    /// jump check's question.
    #[test]
    fn the_c_library_reads_back_whole() {
        let path = libc_path();
        let bytes = export_objects(&[&path], |_| true);
        let file = object_file(&path).unwrap();
        let (back, image) = get_object(&mut In(&bytes[8..])).expect("reads back");
        assert_eq!(image, None);
        assert_eq!(back.key, file.key);
        assert_eq!(back.functions, file.functions);
        assert_eq!(back.plt, file.plt);
        assert_eq!(back.first_segment, file.first_segment);
        assert_eq!(back.starts.get(), file.starts.get());
        let parts = |f: &ObjectFile| {
            let c = f.candidates.get().unwrap().as_ref().unwrap();
            let (base, size, buckets, opcodes) = c.parts();
            (base, size, buckets.to_vec(), opcodes.to_vec())
        };
        assert_eq!(parts(&back), parts(&file));
        assert!(parts(&file).3.len() > 10_000, "libc's candidates");
        assert_eq!(back.pads.get(), file.pads.get());
        assert_eq!(back.code.get().unwrap().as_ref().map(Vec::len), file.code.get().unwrap().as_ref().map(Vec::len));
        for f in file.functions.iter().filter(|f| f.size >= 5).step_by(7) {
            for at in [f.start, Addr(f.start.0 + 1)] {
                assert_eq!(back.what_lands_in(at, 5), file.what_lands_in(at, 5), "{} at {at:?}", f.name);
            }
        }
    }

    /// A blob cut anywhere, or with a byte changed in its counts, never panics and never
    /// takes a file it could not read whole.
    #[test]
    fn a_damaged_blob_is_refused_not_trusted() {
        let path = libc_path();
        let bytes = export_objects(&[&path], |_| false);
        for cut in [0, 3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(get_object(&mut In(&bytes[8.min(cut)..cut])).is_none(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        // The path's length, made huge.
        wrong[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(import_objects(&wrong), 0);
        assert_eq!(import_objects(b"not a blob"), 0);
    }

    /// A process that has not read a file takes it over, and finds its functions where the
    /// file's reading finds them; not once the file changed (another version at that path).
    #[test]
    fn a_file_is_taken_over_only_in_the_version_this_process_sees() {
        let dir = std::env::temp_dir().join(format!("dprobe-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("libcopy.so");
        std::fs::copy(libc_path(), &copy).unwrap();
        let copy = copy.to_string_lossy().into_owned();
        let bytes = export_objects(&[&copy], |_| true);
        let read = object_file(&copy).unwrap();
        forget_object_file(&copy);
        assert_eq!(import_objects(&bytes), 1, "taken over");
        let taken = object_file(&copy).unwrap();
        assert!(!Arc::ptr_eq(&taken, &read));
        assert_eq!(taken.functions, read.functions);
        assert!(taken.bytes.get().is_none(), "the bytes are read when needed, not sent");
        let getpid = read.names.get("getpid");
        assert!(!getpid.is_empty());
        assert_eq!(taken.names.get("getpid"), getpid);
        assert_eq!(import_objects(&bytes), 0, "taken once");
        forget_object_file(&copy);
        // Handed over without its code analysed: the symbols are kept, not the file's bytes.
        export_objects(&[&copy], |_| false);
        assert!(object_file(&copy).unwrap().bytes.get().is_none(), "no copy of the file kept");
        forget_object_file(&copy);
        // The same bytes, written again: a new modification time.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let data = std::fs::read(&copy).unwrap();
        std::fs::write(&copy, data).unwrap();
        assert_eq!(import_objects(&bytes), 0, "a changed file is read afresh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bytes of a file analysed can go with it as an image: the importer takes the image
    /// it is handed for that number instead of reading the file, and only one of the file's
    /// size; a file not analysed has no image asked for.
    #[test]
    fn a_file_s_bytes_go_over_as_an_image_of_its_size() {
        let dir = std::env::temp_dir().join(format!("dprobe-handover-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("libcopy.so");
        std::fs::copy(libc_path(), &copy).unwrap();
        let copy = copy.to_string_lossy().into_owned();
        let mut asked = Vec::new();
        let bytes = export_objects_with_images(&[&copy], |_| true, &mut |version, bytes| {
            asked.push((version.path().to_owned(), bytes.len()));
            Some(7)
        });
        let size = std::fs::metadata(&copy).unwrap().len() as usize;
        assert_eq!(asked, [(copy.clone(), size)]);
        let read = object_file(&copy).unwrap();
        let from_the_file = read.what_lands_in(read.functions[0].start, 5);
        forget_object_file(&copy);
        // An image of the wrong size is not taken: the file is read when needed.
        let mut given = Vec::new();
        let short = FileBytes::new(vec![0u8; 16]);
        assert_eq!(
            import_objects_with_images(&bytes, &mut |n| {
                given.push(n);
                Some(short.clone())
            }),
            1
        );
        assert_eq!(given, [7]);
        assert!(object_file(&copy).unwrap().bytes.get().is_none());
        forget_object_file(&copy);
        // The image: its bytes are the file's (here, read by another name).
        let image = FileBytes::new(std::fs::read(&copy).unwrap());
        assert_eq!(import_objects_with_images(&bytes, &mut |_| Some(image.clone())), 1);
        let taken = object_file(&copy).unwrap();
        let held = taken.bytes.get().cloned().flatten().expect("the image is held");
        assert_eq!(held.as_ptr(), image.as_ptr(), "the image itself, not a copy");
        assert_eq!(taken.what_lands_in(taken.functions[0].start, 5), from_the_file);
        forget_object_file(&copy);
        // Not analysed: no image.
        let mut asked = 0;
        export_objects_with_images(&[&copy], |_| false, &mut |_, _| {
            asked += 1;
            None
        });
        assert_eq!(asked, 0);
        forget_object_file(&copy);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
