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

#[test]
fn names_with_a_plus_resolve() {
    // SAFETY: adds two numbers.
    assert_eq!(unsafe { dprobe_test_fixtures::fxcpp_add_money(2, 3) }, 5);
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let resolve = |text: &str| s.resolve(&maps, &dprobe_spec::parse_point(text).unwrap());
    let op = resolve("operator+").expect("the C++ operator+");
    assert_eq!(op.function.demangled.as_deref(), Some("operator+(FxMoney, FxMoney)"));
    assert_eq!((op.offset, op.addr), (0, op.function.start));
    assert_eq!(resolve("operator++1").unwrap().addr, op.addr.offset(1), "operator+ at 1");
    let throw = resolve("libstdc++:__cxa_throw").expect("libstdc++'s __cxa_throw");
    assert!(throw.function.object_file_name().starts_with("libstdc++.so"), "{}", throw.object());
    let path = format!("{}:__cxa_throw+1", throw.object());
    assert_eq!(resolve(&path).unwrap().addr, throw.addr.offset(1), "{path}");
}

#[test]
fn an_address_in_a_binary_is_its_link_time_address() {
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let getpid = s.find("libc:getpid").unwrap();
    let link = getpid.start.0 - getpid.bias;
    let t = s.resolve(&maps, &dprobe_spec::parse_point(&format!("libc:{link:#x}+1")).unwrap()).unwrap();
    assert_eq!((t.addr, t.offset, &t.function.name), (getpid.start.offset(1), 1, &getpid.name));
    assert_eq!(t.file_offset, getpid.file_offset + 1);
    let run_time = s.resolve(&maps, &dprobe_spec::parse_point(&format!("{:#x}", getpid.start.0)).unwrap()).unwrap();
    assert_eq!(run_time.addr, getpid.start, "without a binary, an address in the process");
}

#[test]
fn what_does_not_resolve_says_why() {
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let resolve = |text: &str| s.resolve(&maps, &dprobe_spec::parse_point(text).unwrap()).unwrap_err();
    assert!(matches!(resolve("libnothing:f"), ResolveError::ObjectNotLoaded { object } if object == "libnothing"));
    assert!(matches!(resolve("./no/such/prog:f"), ResolveError::NoSuchFile { path, .. } if path == "./no/such/prog"));
    assert!(
        matches!(resolve("libc:no_such_function"), ResolveError::SymbolNotFound { symbol } if symbol == "libc:no_such_function")
    );
    assert!(matches!(resolve("libc:getpid+100000"), ResolveError::OffsetOutOfFunction { offset: 100000, .. }));
    assert!(matches!(resolve("0x10"), ResolveError::NotMapped { addr: Addr(0x10) }));
    assert!(matches!(resolve("kernel:schedule"), ResolveError::NotUserCode { .. }));
}

#[test]
fn plt_stubs_are_refused_with_the_reason() {
    use object::{Object, ObjectSection};
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let e = s.resolve(&maps, &dprobe_spec::parse_point("puts@plt").unwrap()).unwrap_err();
    assert!(matches!(e, ResolveError::PltStub { ref name } if name == "puts"), "{e:?}");
    assert!(e.to_string().contains("probe `puts` itself"), "{e}");
    // An address inside libc's own PLT.
    let getpid = s.find("libc:getpid").unwrap();
    let data = std::fs::read(&*getpid.object).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let plt = file.sections().find(|s| s.name() == Ok(".plt")).expect("libc has a PLT");
    let in_plt = Addr(plt.address() + getpid.bias + 16);
    let e = s.resolve_addr(&maps, in_plt).unwrap_err();
    assert!(matches!(e, ResolveError::InPlt { addr, .. } if addr == in_plt), "{e:?}");
    assert!(e.to_string().contains("PLT stub of `"), "{e}");
}

#[test]
fn a_name_means_the_function_not_the_part_the_compiler_split_off() {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cold_part.cpp");
    let flags = ["-O2", "-freorder-blocks-and-partition", "-Wl,--no-as-needed", "-lstdc++"];
    let program = dprobe_test_fixtures::c_program(source, "cold_part", &flags);
    let s = Symbols::load_file(program).unwrap();
    let cold = s.find("_Z5innerl.cold").expect("g++ -O2 splits the throw into a .cold part");
    assert!(cold.is_compiler_copy());
    for name in ["inner", "inner(long)"] {
        let f = s.find(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(&*f.name, "_Z5innerl", "{name} names the function, not its .cold part at {:?}", cold.start);
        assert!(!f.is_compiler_copy());
    }
}

#[test]
fn an_indirect_function_resolves_to_the_implementation_the_loader_chose() {
    // This process calls strlen through the implementation its loader chose; taking the
    // function's address gives that implementation, not the resolver.
    let implementation = libc::strlen as *const () as u64;
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let ifunc = s.find("libc:strlen").expect("libc's strlen symbol");
    assert!(ifunc.ifunc, "strlen is an indirect function in glibc");
    assert_ne!(ifunc.start.0, implementation, "the symbol is the resolver");
    let target = s.resolve_name(&maps, Some("libc"), "strlen", 0).unwrap();
    assert_eq!(target.addr.0, implementation, "{target:?}");
    assert!(target.function.name.starts_with("__strlen_"), "{target:?}");
    assert!(!target.function.ifunc);
    let e = s.resolve_name(&maps, Some("libc"), "strlen", 4).unwrap_err();
    assert!(matches!(e, ResolveError::IndirectFunction { .. }), "{e:?}");
}

/// A `static` function of the C library, which only its separate debug file names (the CI
/// installs `libc6-dbg`): an address inside it is in a function, as a probe there (a copy of
/// a function inlined into it) and a stack through it need.
#[test]
fn a_function_only_the_debug_file_names_holds_its_addresses() {
    use object::{Object, ObjectSymbol};
    let maps = read_maps().unwrap();
    let s = Symbols::load(&maps);
    let getpid = s.find("libc:getpid").expect("libc's getpid");
    let libc = std::fs::read(&*getpid.object).unwrap();
    let id = object::File::parse(&*libc).unwrap().build_id().unwrap().expect("the C library has a build-id");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
    let debug = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (the libc6-dbg package)"));
    let debug = object::File::parse(&*debug).unwrap();
    let in_libc = |a: u64| s.functions().iter().any(|f| f.object == getpid.object && f.contains(Addr(a)));
    let locals: Vec<(String, u64)> = debug
        .symbols()
        .filter(|sym| sym.kind() == object::SymbolKind::Text && sym.is_local() && sym.size() > 1)
        .map(|sym| (sym.name().unwrap_or_default().to_owned(), sym.address() + getpid.bias))
        .collect();
    let (name, start) =
        locals.iter().find(|(_, start)| !in_libc(*start)).expect("a static function libc's own symbols leave out");
    let f = s.containing(Addr(start + 1)).unwrap_or_else(|| panic!("{name}, not in libc's own symbols"));
    assert_eq!(f.start, Addr(*start), "{name}: {f:?}");
    assert!(locals.iter().any(|(n, a)| *a == *start && **n == *f.name), "{name}: {f:?}");
    let target = s.resolve_addr(&maps, Addr(start + 1)).expect("a probe-able address");
    assert_eq!((target.function.start, target.offset), (Addr(*start), 1));
}

/// The functions of every object of a process, each object's sorted and indexed by name once
/// from its file and placed at its address: in address order over the whole process, each
/// symbol once, and each found by its name in its object.
#[test]
fn a_process_s_functions_are_in_address_order_and_found_by_name_in_their_object() {
    let s = Symbols::load(&read_maps().unwrap());
    let functions = s.functions();
    assert!(s.objects().len() >= 3, "this test, libc and the loader: {:?}", s.objects());
    assert!(
        functions.windows(2).all(|w| (w[0].start, &w[0].name) < (w[1].start, &w[1].name)),
        "in order of address, then name, each symbol once"
    );
    for f in functions.iter().filter(|f| !f.name.is_empty()) {
        let object = ObjectName::new(&f.object).unwrap();
        let found = s.find_in(Some(&object), &f.name).unwrap_or_else(|| panic!("{} in {}", f.name, f.object));
        assert_eq!((&found.name, &found.object), (&f.name, &f.object));
    }
}

/// A device is refused at once, never read as an object file (`/dev/zero`'s reading would
/// never end); so is a directory.
#[test]
fn a_device_or_a_directory_is_refused_not_read() {
    for path in ["/dev/zero", "/usr"] {
        let e = Symbols::load_file(path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{path}: {e}");
    }
}
