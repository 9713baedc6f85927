//! Source lines and inlined copies in programs built by gcc and clang at -O0 and -O2: the
//! addresses dprobe finds agree with what the fixture's source says.
use std::path::PathBuf;

use dprobe_dwarf::{find_function, find_functions, DebugInfo, LineError, LineTable};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lines.c");

/// The line of the fixture whose text contains `marker`.
fn line_of(marker: &str) -> u32 {
    let text = std::fs::read_to_string(SOURCE).unwrap();
    text.lines().position(|l| l.contains(marker)).expect(marker) as u32 + 1
}

/// The fixture built by `cc` with `opt` and `-g`, once per test process.
fn build(cc: &str, opt: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{cc}{opt}");
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let dir = std::env::temp_dir().join(format!("dprobe-dwarf-lines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("lines-{cc}{opt}"));
    let ok = std::process::Command::new(cc).args(["-g", opt, "-o"]).arg(&out).arg(SOURCE).status().unwrap().success();
    assert!(ok, "{cc} {opt}");
    built.push((key, out.clone()));
    out
}

const BUILDS: [(&str, &str); 4] = [("gcc", "-O0"), ("gcc", "-O2"), ("clang", "-O0"), ("clang", "-O2")];

#[test]
fn a_line_has_one_site_per_copy_of_its_code() {
    for (cc, opt) in BUILDS {
        let info = DebugInfo::load(build(cc, opt)).unwrap().expect("built with -g");
        let table = LineTable::load(info.dwarf()).unwrap();
        let file = table.find_file("lines.c").unwrap().to_owned();
        assert!(file.ends_with("/tests/fixtures/lines.c"), "{cc} {opt}: {file}");
        assert_eq!(table.find_file("fixtures/lines.c").unwrap(), file);
        // scale()'s body: out of line, and inlined into site_a, site_b and site_c.
        let body = table.line_addresses(&file, line_of("/* SCALE_BODY */")).unwrap();
        assert_eq!(body.len(), 4, "{cc} {opt}: {body:x?}");
        let third = table.line_addresses(&file, line_of("/* THIRD */")).unwrap();
        assert_eq!(third.len(), 1, "{cc} {opt}: {third:x?}");
        // The blank line and the comment after `long v = i * 2;`.
        let code = line_of("long v = i * 2");
        for line in [code + 1, code + 2] {
            let e = table.line_addresses(&file, line).unwrap_err();
            assert!(
                matches!(e, LineError::NoCode { above: Some(a), below: Some(b), .. } if a == code && b == code + 3),
                "{cc} {opt}: {e}"
            );
        }
        let e = table.find_file("nothere.c").unwrap_err();
        assert!(e.to_string().contains("its files include lines.c"), "{e}");
    }
}

#[test]
fn inlined_copies_are_found_in_every_caller() {
    for (cc, opt) in BUILDS {
        let info = DebugInfo::load(build(cc, opt)).unwrap().expect("built with -g");
        let scale = find_function(info.dwarf(), "scale").unwrap().expect("scale");
        assert_eq!(scale.inlined.len(), 3, "{cc} {opt}: {scale:x?}");
        assert!(!scale.out_of_line.is_empty(), "{cc} {opt}: its address is taken");
        assert_eq!(scale.decl_line, Some(line_of("long scale(long x)")));
        assert!(scale.decl_file.as_deref().is_some_and(|f| f.ends_with("lines.c")));
        let only = find_function(info.dwarf(), "only_inlined").unwrap().expect("only_inlined");
        assert_eq!((only.inlined.len(), only.out_of_line.len()), (2, 0), "{cc} {opt}: {only:x?}");
        let step = find_function(info.dwarf(), "step").unwrap().expect("step");
        assert!(step.inlined.is_empty() && !step.out_of_line.is_empty(), "{cc} {opt}: {step:x?}");
        assert!(find_function(info.dwarf(), "no_such_function").unwrap().is_none());
        // Each inlined copy's entry is in its code.
        for copy in &scale.inlined {
            assert!(copy.ranges.iter().any(|r| r.contains(&copy.entry)), "{cc} {opt}: {copy:x?}");
        }
    }
}

#[test]
fn several_functions_are_found_in_one_pass() {
    let info = DebugInfo::load(build("gcc", "-O2")).unwrap().expect("built with -g");
    let found = find_functions(info.dwarf(), &["scale", "only_inlined", "step", "no_such_function"]).unwrap();
    let mut names: Vec<&str> = found.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["only_inlined", "scale", "step"]);
    assert_eq!(found["scale"], find_function(info.dwarf(), "scale").unwrap().unwrap());
    // step's lines end before the next function of the file (main).
    assert_eq!(found["step"].next_decl_line, Some(line_of("int main(")));
    let table = LineTable::load(info.dwarf()).unwrap();
    let (_, first, last) = found["step"].line_span(&table).unwrap();
    assert_eq!((first, last), (line_of("long step(long i)"), line_of("return v;") + 1), "the closing brace");
}
