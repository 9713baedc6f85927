//! Finding a binary's DWARF in each place it can be, and refusing files that do not match.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use dprobe_dwarf::gimli::Reader as _;
use dprobe_dwarf::{DebugInfo, Origin, Search};

const PROGRAM: &str =
    "int answer(int x) { return x * 42; }\nint main(int argc, char **argv) { return answer(argc); }\n";

/// A binary built with `-g` and a given build-id, in a fresh directory.
fn binary(dir_name: &str, build_id: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(dir_name);
    let id = format!("-Wl,--build-id=0x{build_id}");
    let bin = compile("cc", PROGRAM, &dir, "prog", &["-g", "-O0", &id]);
    (dir, bin)
}

fn search(root: &Path) -> Search {
    Search { debug_root: root.to_path_buf(), debuginfod_cache: None }
}

/// The names of the functions the DWARF describes (proof that it was really read).
fn function_names(info: &DebugInfo) -> Vec<String> {
    let dwarf = info.dwarf();
    let mut names = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let mut entries = unit.entries();
        while let Some((_, entry)) = entries.next_dfs().unwrap() {
            if entry.tag() == dprobe_dwarf::gimli::DW_TAG_subprogram {
                if let Some(name) = entry.attr_value(dprobe_dwarf::gimli::DW_AT_name).unwrap() {
                    names.push(dwarf.attr_string(&unit, name).unwrap().to_string_lossy().unwrap().into_owned());
                }
            }
        }
    }
    names.sort();
    names
}

#[test]
fn embedded_dwarf_is_read_from_the_binary() {
    let (dir, bin) = binary("embedded", &unique_build_id());
    let info = DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().expect("DWARF");
    assert_eq!(info.origin(), &Origin::Embedded);
    assert_eq!(function_names(&info), ["answer", "main"]);
    assert!(info.call_frames().is_some(), ".eh_frame from the binary");
}

#[test]
fn a_binary_without_dwarf_anywhere_has_none() {
    let (dir, bin) = binary("none", &unique_build_id());
    std::process::Command::new("strip").arg("--strip-debug").arg(&bin).status().unwrap();
    assert!(DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().is_none());
    let places = search(&dir.join("root")).places(&bin).unwrap();
    assert_eq!(places[0], bin);
    assert!(places[1].starts_with(dir.join("root/.build-id")), "{places:?}");
}

#[test]
fn a_debug_file_is_found_by_build_id_under_the_debug_root() {
    let id = unique_build_id();
    let (dir, bin) = binary("build-id", &id);
    let debug = dir.join("root/.build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    split_debug(&bin, &debug);
    let info = DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().expect("DWARF");
    assert_eq!(info.origin(), &Origin::BuildId(debug));
    assert_eq!(function_names(&info), ["answer", "main"]);
    assert_eq!(dprobe_dwarf::hex(info.build_id().unwrap()), id);
}

#[test]
fn a_debug_file_of_another_build_under_our_build_id_is_refused() {
    let id = unique_build_id();
    let (dir, bin) = binary("build-id-mismatch", &id);
    let (_, other) = binary("build-id-mismatch-other", &unique_build_id());
    let debug = dir.join("root/.build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    split_debug(&other, &debug);
    std::process::Command::new("strip").arg("--strip-debug").arg(&bin).status().unwrap();
    assert!(DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().is_none());
}

#[test]
fn a_debug_file_is_found_through_gnu_debuglink_in_each_directory() {
    for place in ["same", "dot-debug", "root"] {
        let (dir, bin) = binary(&format!("debuglink-{place}"), &unique_build_id());
        let made = dir.join("prog.debug");
        split_debug(&bin, &made);
        add_debuglink(&bin, &made);
        let canonical_dir = std::fs::canonicalize(&dir).unwrap();
        let expected = match place {
            "same" => made.clone(),
            "dot-debug" => dir.join(".debug/prog.debug"),
            _ => dir.join("root").join(canonical_dir.strip_prefix("/").unwrap()).join("prog.debug"),
        };
        if expected != made {
            std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
            std::fs::rename(&made, &expected).unwrap();
        }
        // No build-id file exists, so only the link can find it.
        let info = DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().expect(place);
        let found = info.origin().file().map(|p| std::fs::canonicalize(p).unwrap());
        assert_eq!(found, Some(std::fs::canonicalize(&expected).unwrap()), "{place}");
        assert!(matches!(info.origin(), Origin::DebugLink(_)), "{place}");
        assert_eq!(function_names(&info), ["answer", "main"]);
    }
}

#[test]
fn a_debuglink_file_with_the_wrong_crc_is_refused() {
    let (dir, bin) = binary("debuglink-crc", &unique_build_id());
    let debug = dir.join("prog.debug");
    split_debug(&bin, &debug);
    add_debuglink(&bin, &debug);
    // Another build's debug file under the same name: its CRC is not the recorded one.
    let (_, other) = binary("debuglink-crc-other", &unique_build_id());
    split_debug(&other, &debug);
    assert!(DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().is_none());
}

#[test]
fn a_debug_file_is_found_in_a_debuginfod_cache() {
    let id = unique_build_id();
    let (dir, bin) = binary("debuginfod", &id);
    let cache = dir.join("cache");
    let debug = cache.join(&id).join("debuginfo");
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    split_debug(&bin, &debug);
    let s = Search { debug_root: dir.join("root"), debuginfod_cache: Some(cache) };
    let info = DebugInfo::load_with(&bin, &s).unwrap().expect("DWARF");
    assert_eq!(info.origin(), &Origin::DebuginfodCache(debug));
    assert_eq!(function_names(&info), ["answer", "main"]);
}

/// Removes a file (and its directory when emptied) even when the test fails.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The real place: `/usr/lib/debug/.build-id/` with the default search (needs root).
#[test]
fn the_system_build_id_directory_is_searched_by_default() {
    let id = unique_build_id();
    let (dir, bin) = binary("system", &id);
    let debug = Path::new("/usr/lib/debug/.build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug.parent().unwrap()).expect("creating a directory under /usr/lib/debug (root needed)");
    let _cleanup = Remove(debug.clone());
    split_debug(&bin, &dir.join("made.debug"));
    std::fs::copy(dir.join("made.debug"), &debug).unwrap();
    let info = DebugInfo::load(&bin).unwrap().expect("DWARF");
    assert_eq!(info.origin(), &Origin::BuildId(debug));
    assert_eq!(function_names(&info), ["answer", "main"]);
}

#[test]
fn file_offsets_and_addresses_translate_through_the_segments() {
    let (dir, bin) = binary("segments", &unique_build_id());
    let info = DebugInfo::load_with(&bin, &search(&dir.join("root"))).unwrap().expect("DWARF");
    let (address, offset) = text_section(&bin);
    assert_eq!(info.file_offset(address + 3), Some(offset + 3));
    assert_eq!(info.address_of_file_offset(offset + 3), Some(address + 3));
    assert_eq!(info.file_offset(0xffff_ffff_0000), None);
}

/// `.text`'s (address, file offset), read with `readelf` so the test does not use the code it
/// checks.
fn text_section(bin: &Path) -> (u64, u64) {
    let out = std::process::Command::new("readelf").arg("-SW").arg(bin).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.contains(" .text ")).expect(".text");
    let fields: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    // Name Type Address Off Size ...
    (u64::from_str_radix(fields[2], 16).unwrap(), u64::from_str_radix(fields[3], 16).unwrap())
}
