//! The objects the loader mapped when the program started: the program itself, the libraries
//! preloaded (`LD_PRELOAD`, `/etc/ld.so.preload`), the program's `DT_NEEDED` libraries, and the
//! ones those need in turn. `dlclose` unloads only what `dlopen` loaded, so a probe placed in
//! one of these stays in place while the program unloads a library.
//!
//! Decided by the address a probe was placed at, not by the name it was asked by: a library
//! `dlopen` loaded under the same name (another version, another directory, a `dlmopen`
//! copy) is not one of these. Each name is the first object of that name in the loader's
//! list, which holds the objects loaded at the start before any `dlopen`ed one. The program is
//! the list's first object, read from the file mapped there: also when the loader started it
//! (`ld.so ./program`, where `/proc/self/exe` is the loader). The preloaded names are those of
//! the environment the program started with (`/proc/self/environ`).
//!
//! Not counted among them (a probe there is taken out at every unload, as on any library
//! `dlopen` loaded): a library the loader names otherwise than by a directory and the name
//! asked for, and one preloaded by `ld.so --preload`.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::Path;
use std::sync::OnceLock;

/// Whether `addr` is in a segment of the program or of a library loaded with it (found once
/// per process).
pub(crate) fn holds(addr: u64) -> bool {
    static RANGES: OnceLock<Vec<(u64, u64)>> = OnceLock::new();
    RANGES
        .get_or_init(|| startup_ranges(&loaded_objects(), &preloaded(), needed))
        .iter()
        .any(|&(start, end)| (start..end).contains(&addr))
}

/// An object in the loader's list: its name, and where its segments are.
struct Loaded {
    name: String,
    segments: Vec<(u64, u64)>,
}

/// The `DT_NEEDED` names of the file at `path` (none if it cannot be read).
fn needed(path: &str) -> Vec<String> {
    dprobe_sym::needed_libraries(Path::new(path)).unwrap_or_default()
}

/// The segments of the program (the first of the objects `loaded`), of the libraries named
/// `preloaded`, and of the `needed` closure of those, among the objects `loaded`.
fn startup_ranges(loaded: &[Loaded], preloaded: &[String], needed: impl Fn(&str) -> Vec<String>) -> Vec<(u64, u64)> {
    let Some((program, libraries)) = loaded.split_first() else { return Vec::new() };
    let mut ranges = program.segments.clone();
    let mut seen = HashSet::new();
    let mut queue = program_file(program).map_or_else(|| needed("/proc/self/exe"), |file| needed(&file));
    queue.extend(preloaded.iter().rev().cloned());
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
        let Some(object) = libraries.iter().find(named) else { continue };
        queue.extend(needed(&object.name));
        ranges.extend_from_slice(&object.segments);
    }
    ranges
}

/// The file mapped where `program`'s first segment is, if it is a file.
fn program_file(program: &Loaded) -> Option<String> {
    let &(start, _) = program.segments.first()?;
    let maps = dprobe_sym::read_maps().ok()?;
    maps.iter().find(|m| (m.start.0..m.end.0).contains(&start)).and_then(|m| m.path.clone())
}

/// The libraries preloaded when the program started: `LD_PRELOAD` of its first environment,
/// then `/etc/ld.so.preload` (names separated by spaces or colons, as the loader reads them).
fn preloaded() -> Vec<String> {
    let environment = std::fs::read("/proc/self/environ").unwrap_or_default();
    let variable = environment.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"LD_PRELOAD="));
    let listed = std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default();
    let from_environment = String::from_utf8_lossy(variable.unwrap_or_default()).into_owned();
    [from_environment, listed]
        .iter()
        .flat_map(|names| {
            names.split([' ', ':', '\t', '\n']).filter(|n| !n.is_empty()).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
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
    fn the_program_and_the_c_library_are_loaded_with_this_program() {
        assert!(holds(libc::getpid as *const () as u64));
        assert!(holds(the_program_and_the_c_library_are_loaded_with_this_program as *const () as u64));
        // Its stack is not.
        let local = 0u8;
        assert!(!holds(&local as *const u8 as u64));
    }

    fn object(name: &str, at: u64) -> Loaded {
        Loaded { name: name.into(), segments: vec![(at, at + 0x1000)] }
    }

    #[test]
    fn only_the_first_object_of_a_needed_name_counts() {
        let loaded = [
            object("", 0x1000),
            object("/lib/x86_64-linux-gnu/libc.so.6", 0x10000),
            object("/opt/app/libplugin.so", 0x20000),
            object("/opt/other/libc.so.6", 0x30000),
        ];
        let needed = |_: &str| vec!["libc.so.6".to_owned()];
        assert_eq!(startup_ranges(&loaded, &[], needed), [(0x1000, 0x2000), (0x10000, 0x11000)]);
    }

    #[test]
    fn preloaded_libraries_and_what_they_need_count() {
        let loaded = [
            object("", 0x1000),
            object("/opt/jemalloc/libjemalloc.so.2", 0x10000),
            object("./libshim.so", 0x20000),
            object("/lib/x86_64-linux-gnu/libc.so.6", 0x30000),
            object("/lib/x86_64-linux-gnu/libstdc++.so.6", 0x40000),
            object("/opt/app/libplugin.so", 0x50000),
        ];
        let needed = |path: &str| match path {
            "/opt/jemalloc/libjemalloc.so.2" => vec!["libstdc++.so.6".to_owned()],
            "/lib/x86_64-linux-gnu/libstdc++.so.6" => vec!["libc.so.6".to_owned()],
            _ => Vec::new(),
        };
        let preloaded = ["libjemalloc.so.2".to_owned(), "./libshim.so".to_owned()];
        let mut ranges = startup_ranges(&loaded, &preloaded, needed);
        ranges.sort();
        let starts: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        assert_eq!(starts, [0x1000, 0x10000, 0x20000, 0x30000, 0x40000]);
    }
}
