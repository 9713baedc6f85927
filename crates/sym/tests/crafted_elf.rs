//! A damaged or crafted ELF file cannot make dprobe read or allocate what it does not hold: a
//! function's size is bounded by the section that holds it.
use dprobe_sym::{ResolveError, Symbols};
use dprobe_test_fixtures::{crafted_elf, CRAFTED_CODE as CODE};

fn crafted() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("dprobe-crafted-{}.o", std::process::id()));
    crafted_elf(&path);
    path
}

#[test]
fn sizes_are_bounded_by_the_section() {
    let path = crafted();
    let symbols = Symbols::load_file(path.to_str().unwrap()).unwrap();
    let huge = symbols.find("huge").expect("huge");
    assert_eq!((huge.start.0, huge.size), (0, 16), "2^40 bytes claimed, 16 in the section");
    let past = symbols.find("past").expect("past");
    assert_eq!((past.start.0, past.size), (8, 8), "108 bytes claimed from offset 8 of 16");
    let data = std::fs::read(&path).unwrap();
    let at = huge.file_offset as usize;
    assert_eq!(&data[at..at + huge.size as usize], &CODE, "the file offset is the section's bytes");
    let target = dprobe_spec::parse_point("huge+0x20").unwrap();
    let e = symbols.resolve(&[], &target).unwrap_err();
    assert!(matches!(e, ResolveError::OffsetOutOfFunction { offset: 0x20, size: 16, .. }), "{e:?}");
    let target = dprobe_spec::parse_point("past+4").unwrap();
    let t = symbols.resolve(&[], &target).unwrap();
    assert_eq!((t.addr.0, t.file_offset), (12, huge.file_offset + 12));
    std::fs::remove_file(path).unwrap();
}
