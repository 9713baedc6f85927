//! The static probes of a C program built with `<sys/sdt.h>`, at -O0 (arguments on the stack)
//! and -O2 (in registers): names, sites inside their functions, the semaphore of the one
//! that has one, and arguments decoded into fetch arguments.

use dprobe_spec::{ArgType, Fetch};
use dprobe_sym::{usdt_probes, Symbols};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/fixtures");

fn program(opt: &str) -> String {
    let plain = format!("{FIXTURES}/usdt_plain.c");
    let path =
        dprobe_test_fixtures::c_program(&format!("{FIXTURES}/usdt.c"), &format!("usdt{opt}"), &[opt, plain.as_str()]);
    std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned()
}

#[test]
fn notes_give_each_probe_its_site_semaphore_and_arguments() {
    for opt in ["-O0", "-O2"] {
        let path = program(opt);
        let data = std::fs::read(&path).unwrap();
        let probes = usdt_probes(&path, &data).unwrap();
        let mut names: Vec<String> = probes.iter().map(|p| p.full_name()).collect();
        names.sort();
        assert_eq!(names, ["app:indexed", "app:konst", "app:req", "app:tick"], "{opt}");
        let symbols = Symbols::load_file(&path).unwrap();
        for p in &probes {
            let f = symbols.containing(dprobe_arch::Addr(p.pc)).expect("a function holds the site");
            let expected = if p.name == "req" { "round_of" } else { "tick" };
            assert_eq!(&*f.name, expected, "{opt} {}", p.full_name());
            assert_eq!(p.file_offset, f.file_offset + (p.pc - f.start.0), "{opt}");
            // Every site is the one-byte nop <sys/sdt.h> puts there.
            assert_eq!(data[p.file_offset as usize], 0x90, "{opt}");
            for a in &p.args {
                // At -O2 the table's element is an indexed operand: refused with the reason.
                let indexed = opt == "-O2" && p.name == "indexed";
                match &a.fetch {
                    Ok(_) => assert!(!indexed, "{opt} {a:?}"),
                    Err(why) => assert!(indexed && why.contains("index register"), "{opt} {}: {a:?}", p.full_name()),
                }
            }
        }
        let by_name = |n: &str| probes.iter().find(|p| p.name == n).unwrap();
        let req = by_name("req");
        let sem = req.semaphore.as_ref().expect("app:req has a semaphore");
        use object::{Object, ObjectSymbol};
        let elf = object::File::parse(&*data).unwrap();
        let counter = elf.symbols().find(|s| s.name() == Ok("app_req_semaphore")).unwrap();
        assert_eq!(sem.addr, counter.address(), "{opt}");
        assert_eq!(sem.object, path);
        assert_eq!(&data[sem.file_offset as usize..sem.file_offset as usize + 2], [0, 0], "{opt}");
        assert!(by_name("tick").semaphore.is_none() && by_name("konst").semaphore.is_none());
        let types = |p: &dprobe_sym::UsdtProbe| p.args.iter().map(|a| a.fetch.as_ref().unwrap().1).collect::<Vec<_>>();
        assert_eq!(types(req), [ArgType::S(32), ArgType::U(64), ArgType::S(64)], "{opt}");
        assert_eq!(types(by_name("tick")), [ArgType::S(16), ArgType::U(8)], "{opt}");
        assert_eq!(by_name("konst").args[0].fetch, Ok((Fetch::Immediate(5), ArgType::S(32))), "{opt}");
    }
}

#[test]
fn a_file_without_notes_has_no_probes_and_a_text_file_is_not_elf() {
    let exe = std::env::current_exe().unwrap();
    let data = std::fs::read(&exe).unwrap();
    assert_eq!(usdt_probes("x", &data).unwrap(), []);
    let e = usdt_probes("x", b"#!/bin/sh\necho hi\n").unwrap_err();
    assert_eq!(e.to_string(), "it is not an ELF file");
}
