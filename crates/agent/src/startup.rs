//! The libraries the loader mapped when the program started: the program's `DT_NEEDED`
//! libraries and the ones they need in turn. `dlclose` unloads only what `dlopen` loaded, so
//! a probe on one of these stays in place while the program unloads a library.
//!
//! Not counted among them (a probe there is taken out at every unload, as on any library
//! `dlopen` loaded): libraries preloaded with `LD_PRELOAD`, and a library the loader names
//! otherwise than by a directory and the name needed.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The files (as `/proc/self/maps` names them) of the libraries loaded with the program;
/// found once per process.
pub(crate) fn startup_files() -> &'static [PathBuf] {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| find(&loaded_names()))
}

/// The `DT_NEEDED` closure of the program, among the objects `loaded` names.
fn find(loaded: &[String]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = dprobe_sym::needed_libraries(Path::new("/proc/self/exe")).unwrap_or_default();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // The loader names a library it found for a `DT_NEEDED` entry by the directory it found
        // it in and that entry, or by the entry itself when it holds a directory.
        let named = |l: &&String| match name.contains('/') {
            true => **l == name,
            false => l.rsplit('/').next() == Some(name.as_str()),
        };
        let Some(path) = loaded.iter().find(named) else { continue };
        queue.extend(dprobe_sym::needed_libraries(Path::new(path)).unwrap_or_default());
        if let Ok(file) = std::fs::canonicalize(path) {
            files.push(file);
        }
    }
    files
}

/// The names the loader gives the objects it has loaded (`dl_iterate_phdr`, which holds the
/// loader's lock: an object cannot go while it is read).
fn loaded_names() -> Vec<String> {
    extern "C" fn each(info: *mut libc::dl_phdr_info, _: libc::size_t, names: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid `info`, whose name is a C string or null, and the
        // `names` given to `dl_iterate_phdr` below.
        unsafe {
            let names = &mut *names.cast::<Vec<String>>();
            let name = (*info).dlpi_name;
            if !name.is_null() {
                names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
        }
        0
    }
    let mut names: Vec<String> = Vec::new();
    // SAFETY: the callback reads only what the loader hands it and pushes to `names`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut names as *mut Vec<String>).cast()) };
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_library_is_loaded_with_this_program() {
        let libc = std::fs::canonicalize(
            loaded_names().iter().find(|n| n.rsplit('/').next() == Some("libc.so.6")).expect("libc.so.6 loaded"),
        )
        .unwrap();
        assert!(startup_files().contains(&libc), "{:?}", startup_files());
    }

    #[test]
    fn only_the_needed_closure_counts() {
        // A library the program does not need, loaded under the name of none of its entries.
        let loaded = vec!["/opt/app/libplugin.so".to_owned()];
        assert_eq!(find(&loaded), Vec::<PathBuf>::new());
    }
}
