//! Symbols of this process and of another one.
use dprobe_arch::Addr;
use dprobe_sym::*;
use std::io::Read;

/// A Rust function to find by its demangled path.
#[inline(never)]
pub fn find_me_by_path(x: u64) -> u64 {
    std::hint::black_box(x) * 3
}

#[test]
fn libc_functions_with_versions() {
    let s = Symbols::load(&read_maps().unwrap());
    let getpid = s.find("libc:getpid").expect("libc's getpid");
    assert_eq!(getpid.start.0, libc::getpid as *const () as u64);
    assert!(getpid.object_file_name().starts_with("libc.so"));
    assert_eq!(getpid.version.as_deref(), Some("GLIBC_2.2.5"));
    assert!(getpid.default_version);
    assert_eq!(getpid.versioned_name(), "getpid@@GLIBC_2.2.5");
    assert_eq!(s.find("getpid@@GLIBC_2.2.5").map(|f| f.start), Some(getpid.start));
    assert_eq!(s.find("getpid@GLIBC_2.2.5").map(|f| f.start), Some(getpid.start));
    assert!(s.find("getpid@@GLIBC_9.9").is_none(), "a version that does not exist");
    assert!(s.find("libnothing:getpid").is_none(), "an object that is not loaded");
    assert_eq!(s.containing(getpid.start.offset(1)).map(|f| f.start), Some(getpid.start));
}

#[test]
fn rust_and_cpp_functions_by_demangled_name() {
    std::hint::black_box(find_me_by_path(1));
    let s = Symbols::load(&read_maps().unwrap());
    let f = s.find("symbols::find_me_by_path").expect("the Rust function by its path");
    assert_eq!(f.start.0, find_me_by_path as *const () as u64);
    assert!(f.name.starts_with("_ZN") || f.name.starts_with("_R"), "{}", f.name);
    // SAFETY: multiplies two numbers.
    assert_eq!(unsafe { dprobe_test_fixtures::fxcpp_area(6, 7) }, 42);
    let c = s.find("dprobe_fixtures::widget_area").expect("the C++ function by its qualified name");
    assert_eq!(c.demangled.as_deref(), Some("dprobe_fixtures::widget_area(long, long)"));
    assert_eq!(s.find("dprobe_fixtures::widget_area(long, long)").map(|f| f.start), Some(c.start));
}

#[test]
fn another_processs_functions_match_their_files_byte_for_byte() {
    let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    // Wait until the dynamic loader has mapped libc.
    let maps = (0..200)
        .find_map(|_| {
            let m = read_maps_of(child.id()).ok()?;
            let loaded = m.iter().any(|m| m.path.as_deref().is_some_and(|p| p.contains("libc.so")));
            if !loaded {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            loaded.then_some(m)
        })
        .expect("the child's maps");
    let s = Symbols::load(&maps);
    let f = s.find("libc:clock_nanosleep").or_else(|| s.find("libc:nanosleep")).expect("a sleep function in libc");
    let mut in_memory = vec![0u8; 16];
    let mut mem = std::fs::File::open(format!("/proc/{}/mem", child.id())).unwrap();
    use std::io::{Seek, SeekFrom};
    mem.seek(SeekFrom::Start(f.start.0)).unwrap();
    mem.read_exact(&mut in_memory).unwrap();
    let file = std::fs::read(&*f.object).unwrap();
    let offset = f.file_offset_of(f.start).unwrap() as usize;
    assert_eq!(&in_memory[..], &file[offset..offset + 16], "{} at {} / file offset {offset:#x}", f.name, f.start);
    assert_eq!(f.file_offset_of(Addr(f.start.0 + 4)), Some(offset as u64 + 4));
    child.kill().unwrap();
    child.wait().unwrap();
}
