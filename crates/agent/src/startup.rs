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
        .get_or_init(|| {
            let loaded = loaded_objects();
            let maps = dprobe_sym::read_maps().unwrap_or_default();
            let needed = |object: &Loaded| file_of(object, &maps).map(|f| needed(&f)).unwrap_or_default();
            let program = loaded.first().map(|p| program_needed(p, &maps)).unwrap_or_default();
            startup_ranges(&loaded, program, &preloaded(), needed)
        })
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

/// The `DT_NEEDED` names of the program, the first object: read through `/proc/self/exe`
/// (which opens it even once deleted or replaced), unless another file is mapped there (a
/// program the loader started, `ld.so ./program`, whose `/proc/self/exe` is the loader).
fn program_needed(program: &Loaded, maps: &[dprobe_sym::Mapping]) -> Vec<String> {
    let exe = std::fs::read_link("/proc/self/exe").ok();
    match file_of(program, maps) {
        Some(file) if exe.as_deref() != Some(Path::new(&file)) => needed(&file),
        _ => needed("/proc/self/exe"),
    }
}

/// The file mapped where `object`'s first segment is, if it is a file (the name a library was
/// loaded by may be relative to a directory the program has left since).
fn file_of(object: &Loaded, maps: &[dprobe_sym::Mapping]) -> Option<String> {
    let &(start, _) = object.segments.first()?;
    maps.iter().find(|m| (m.start.0..m.end.0).contains(&start)).and_then(|m| m.path.clone())
}

/// Whether the loader's object `l` is the library it loaded for `name`: by the directory it
/// found it in and `name`, or by `name` itself when it holds a directory.
fn loaded_for(name: &str, l: &Loaded) -> bool {
    match name.contains('/') {
        true => l.name == name,
        false => l.name.rsplit('/').next() == Some(name),
    }
}

/// The segments of the program (the first of the objects `loaded`, which needs the libraries
/// `program`), of the libraries named `preloaded`, and of the `needed` closure of those, among
/// the objects `loaded`.
fn startup_ranges(
    loaded: &[Loaded],
    program: Vec<String>,
    preloaded: &[String],
    needed: impl Fn(&Loaded) -> Vec<String>,
) -> Vec<(u64, u64)> {
    let Some((first, libraries)) = loaded.split_first() else { return Vec::new() };
    let mut ranges = first.segments.clone();
    // The loader lists the preloaded libraries before the ones the program needs: a name found
    // after those is one `dlopen` loaded (its preloading failed, and the loader went on).
    let needed_from =
        libraries.iter().position(|l| program.iter().any(|n| loaded_for(n, l))).unwrap_or(libraries.len());
    let mut queue = program;
    for name in preloaded {
        if libraries.iter().position(|l| loaded_for(name, l)).is_some_and(|at| at < needed_from) {
            queue.push(name.clone());
        }
    }
    let mut seen = HashSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(object) = libraries.iter().find(|l| loaded_for(&name, l)) else { continue };
        queue.extend(needed(object));
        ranges.extend_from_slice(&object.segments);
    }
    ranges
}

/// The libraries preloaded when the program started: the last `LD_PRELOAD` of its first
/// environment (names separated by spaces or colons), then `/etc/ld.so.preload` (by white
/// space or colons, `#` starting a comment). A name the loader did not load (it only warns) is
/// left out by [`startup_ranges`].
fn preloaded() -> Vec<String> {
    let environment = std::fs::read("/proc/self/environ").unwrap_or_default();
    let variable = environment.split(|&b| b == 0).rev().find_map(|v| v.strip_prefix(b"LD_PRELOAD="));
    let from_environment = String::from_utf8_lossy(variable.unwrap_or_default()).into_owned();
    let listed = std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default();
    let listed = listed.lines().map(|line| line.split('#').next().unwrap_or_default());
    let names = |text: &str, separators: &[char]| -> Vec<String> {
        text.split(separators).filter(|n| !n.is_empty()).map(str::to_owned).collect()
    };
    let mut all = names(&from_environment, &[' ', ':']);
    listed.for_each(|line| all.extend(names(line, &[' ', '\t', ':'])));
    all
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
        let program = vec!["libc.so.6".to_owned()];
        assert_eq!(startup_ranges(&loaded, program, &[], |_| Vec::new()), [(0x1000, 0x2000), (0x10000, 0x11000)]);
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
        let needed = |l: &Loaded| match l.name.as_str() {
            "/opt/jemalloc/libjemalloc.so.2" => vec!["libstdc++.so.6".to_owned()],
            "/lib/x86_64-linux-gnu/libstdc++.so.6" => vec!["libc.so.6".to_owned()],
            _ => Vec::new(),
        };
        let preloaded = ["libjemalloc.so.2".to_owned(), "./libshim.so".to_owned()];
        let mut ranges = startup_ranges(&loaded, vec!["libc.so.6".to_owned()], &preloaded, needed);
        ranges.sort();
        let starts: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        assert_eq!(starts, [0x1000, 0x10000, 0x20000, 0x30000, 0x40000]);
    }

    #[test]
    fn a_preload_the_loader_did_not_load_is_not_one_dlopen_loaded_later() {
        let loaded = [
            object("", 0x1000),
            object("/lib/x86_64-linux-gnu/libc.so.6", 0x10000),
            object("/opt/app/libplugin.so", 0x20000),
        ];
        let preloaded = ["libplugin.so".to_owned()];
        let ranges = startup_ranges(&loaded, vec!["libc.so.6".to_owned()], &preloaded, |_| Vec::new());
        assert_eq!(ranges, [(0x1000, 0x2000), (0x10000, 0x11000)]);
    }
}
