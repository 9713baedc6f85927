//! Functions of one name in several files of a program: a global function and a `static` one
//! of the same name are two functions, while an `extern inline` function's copies, and a
//! header's `static` function copied into each file, are each one function's.
mod common;

use dprobe_dwarf::{find_function, DebugInfo};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn a_static_function_of_a_global_ones_name_is_not_its_copy() {
    let dir = common::temp_dir("same-name");
    for cc in ["gcc", "clang"] {
        let a = std::fs::read_to_string(format!("{FIXTURES}/same_name_a.c")).unwrap();
        let b = format!("{FIXTURES}/same_name_b.c");
        let include = format!("-I{FIXTURES}");
        let program = common::compile(cc, &a, &dir, &format!("same-name-{cc}"), &["-g", "-O2", &include, &b]);
        let info = DebugInfo::load(&program).unwrap().expect("built with -g");

        // `twice`: the global one out of line; the `static` one inlined into in_b is another
        // function.
        let twice = find_function(info.dwarf(), "twice").unwrap().expect("twice");
        assert_eq!(twice.out_of_line_entries.len(), 1, "{cc}: {twice:x?}");
        assert!(twice.inlined.is_empty(), "{cc}: the static twice of the other file is not the global's: {twice:x?}");
        // (The first file is compiled from a copy named after the program.)
        let first_file = format!("same-name-{cc}.c");
        assert!(twice.decl_file.as_deref().is_some_and(|f| f.ends_with(&first_file)), "{cc}: {twice:x?}");

        // `triple`: out of line in one file, inlined in the other: both its.
        let triple = find_function(info.dwarf(), "triple").unwrap().expect("triple");
        assert_eq!(triple.out_of_line_entries.len(), 1, "{cc}: {triple:x?}");
        assert_eq!(triple.inlined.len(), 1, "{cc}: the extern inline copy in in_b: {triple:x?}");

        // `bump`: a static function of the header, in both files: both copies.
        let bump = find_function(info.dwarf(), "bump").unwrap().expect("bump");
        assert_eq!(bump.inlined.len(), 2, "{cc}: a copy in in_a and one in in_b: {bump:x?}");
    }
}
