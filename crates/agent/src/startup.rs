//! The libraries the loader mapped when the program started: the program's `DT_NEEDED`
//! libraries and the ones they need in turn. `dlclose` unloads only what `dlopen` loaded, so
//! a probe placed in one of these stays in place while the program unloads a library.
//!
//! Decided by the address a probe was placed at, not by the name it was asked by: a library
//! `dlopen` loaded under the same name (another version, another directory, a `dlmopen`
//! copy) is not one of these. Each needed name is the first object of that name in the
//! loader's list, which holds the objects loaded at the start before any `dlopen`ed one.
//!
//! Not counted among them (a probe there is taken out at every unload, as on any library
//! `dlopen` loaded): libraries preloaded with `LD_PRELOAD`, those of a program started as
//! `ld.so ./program` (whose `/proc/self/exe` is the loader), and a library the loader names
//! otherwise than by a directory and the name needed.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::Path;
use std::sync::OnceLock;

/// Whether `addr` is in a segment of a library loaded with the program (found once per
/// process).
pub(crate) fn holds(addr: u64) -> bool {
    static RANGES: OnceLock<Vec<(u64, u64)>> = OnceLock::new();
    RANGES.get_or_init(|| startup_ranges(&loaded_objects())).iter().any(|&(start, end)| (start..end).contains(&addr))
}

/// An object in the loader's list: its name, and where its segments are.
struct Loaded {
    name: String,
    segments: Vec<(u64, u64)>,
}

/// The segments of the program's `DT_NEEDED` closure, among the objects `loaded`.
fn startup_ranges(loaded: &[Loaded]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = dprobe_sym::needed_libraries(Path::new("/proc/self/exe")).unwrap_or_default();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // The loader names a library it found for a `DT_NEEDED` entry by the directory it found
        // it in and that entry, or by the entry itself when it holds a directory.
        let named = |l: &&Loaded| match name.contains('/') {
            true => l.name == name,
            false => l.name.rsplit('/').next() == Some(name.as_str()),
        };
        let Some(object) = loaded.iter().find(named) else { continue };
        queue.extend(dprobe_sym::needed_libraries(Path::new(&object.name)).unwrap_or_default());
        ranges.extend_from_slice(&object.segments);
    }
    ranges
}

/// The objects the loader has loaded, in its list's order (`dl_iterate_phdr`, which holds
/// the loader's lock: an object cannot go while it is read).
fn loaded_objects() -> Vec<Loaded> {
    extern "C" fn each(info: *mut libc::dl_phdr_info, _: libc::size_t, out: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid `info`, whose name is a C string or null and whose
        // `dlpi_phnum` program headers are at `dlpi_phdr`, and the `out` given to
        // `dl_iterate_phdr` below.
        unsafe {
            let out = &mut *out.cast::<Vec<Loaded>>();
            let info = &*info;
            if info.dlpi_name.is_null() || info.dlpi_phdr.is_null() {
                return 0;
            }
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
            let segments = headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD)
                .map(|h| (info.dlpi_addr + h.p_vaddr, info.dlpi_addr + h.p_vaddr + h.p_memsz))
                .collect();
            out.push(Loaded { name: CStr::from_ptr(info.dlpi_name).to_string_lossy().into_owned(), segments });
        }
        0
    }
    let mut out: Vec<Loaded> = Vec::new();
    // SAFETY: the callback reads only what the loader hands it and pushes to `out`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut out as *mut Vec<Loaded>).cast()) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_library_is_loaded_with_this_program() {
        assert!(holds(libc::getpid as *const () as u64));
        // The test program itself is not a library.
        assert!(!holds(the_c_library_is_loaded_with_this_program as *const () as u64));
    }

    #[test]
    fn only_the_first_object_of_a_needed_name_counts() {
        let object = |name: &str, at: u64| Loaded { name: name.into(), segments: vec![(at, at + 0x1000)] };
        let loaded = [
            object("", 0x1000),
            object("/lib/x86_64-linux-gnu/libc.so.6", 0x10000),
            object("/opt/app/libplugin.so", 0x20000),
            object("/opt/other/libc.so.6", 0x30000),
        ];
        assert_eq!(startup_ranges(&loaded), [(0x10000, 0x11000)]);
    }
}
