//! C and C++ functions for dprobe's tests (see `fixtures.c`, `fixtures.cpp`).
#![allow(missing_docs)]

pub mod programs;
pub mod wakeups;

extern "C" {
    pub fn fxc_victim(x: i64) -> i64;
    pub fn fxc_jump_out(x: i64) -> i64;
    pub fn fxc_call_back(cb: extern "C" fn(i64) -> i64, x: i64) -> i64;
    pub fn fxc_recurse(n: i64) -> i64;
    pub fn fxc_exit_thread(code: i64) -> i64;
    #[allow(clippy::too_many_arguments)]
    pub fn fxc_many_args(a0: i64, a1: i32, a2: i16, a3: i8, a4: u64, a5: i64, a6: i64, a7: i64, x: f64, y: f32) -> f64;
    pub fn fxc_add(a: i64, b: i64) -> i64;
    pub fn fxc_middle(a: i64) -> i64;
    pub fn fxc_outer(a: i64) -> i64;
    pub fn fxc_exit_process(code: i64) -> i64;
    pub fn fxc_tail_outer(x: i64) -> i64;
    pub fn fxc_tail_inner(x: i64) -> i64;
    pub fn fxc_alt_outer(x: i64, sig: i32) -> i64;
    pub fn fxc_alt_nested(x: i64) -> i64;
    pub fn fxc_on_alt_signal(sig: i32);
    pub fn fxcpp_thrower(x: i64) -> i64;
    pub fn fxcpp_catch(x: i64) -> i64;
    pub fn fxcpp_area(w: i64, h: i64) -> i64;
    pub fn fxcpp_add_money(a: i64, b: i64) -> i64;
    pub fn fxc_signal_recurse_setup(depth_in_handler: i64, sig: i32);
    pub fn fxc_on_signal_recurse(sig: i32);
    pub fn fxc_signal_recurse(n: i64) -> i64;
    pub fn fxc_own_return() -> i64;
    pub fn fxc_ask_own_return() -> i64;
    pub fn fxcpp_pass(x: i64) -> i64;
    pub fn fxcpp_catch_two(x: i64) -> i64;
    pub fn fxc_tail_rec(n: i64) -> i64;
    pub fn fxc_tail_rec_step(n: i64) -> i64;
    pub fn fxc_tail_loop(n: i64) -> i64;
    pub fn fxc_tail_loop_step(n: i64) -> i64;
    pub fn fxc_tail_victim(x: i64) -> i64;
    pub fn fxc_jump_out_tail(x: i64) -> i64;
    pub fn fxcpp_tail_throw(x: i64) -> i64;
    pub fn fxcpp_catch_tail(x: i64) -> i64;
    pub fn fxc_deep_victim(n: i64) -> i64;
    pub fn fxc_co_rec(n: i64) -> i64;
    pub fn fxc_coroutines(rounds: i64, depth: i64, higher: i32) -> i64;
    pub fn fxc_mig_rec(n: i64) -> i64;
    pub fn fxc_co_migrate(rounds: i64, depth: i64) -> i64;
    pub fn fxc_deep_jump_out(n: i64) -> i64;
    pub fn fxcpp_deep_thrower(n: i64, depth: i64) -> i64;
    pub fn fxcpp_deep_catch(n: i64) -> i64;
    /// The K-th of 8 copies of a function catching what its callee throws, compiled -O0
    /// (`landing_pads.cpp`): 3x for an even x, -x for an odd one; `None` past the last.
    pub fn fxeh_catch_copy_o0(k: i32) -> Option<unsafe extern "C" fn(i64) -> i64>;
    /// The same, compiled -O2.
    pub fn fxeh_catch_copy_o2(k: i32) -> Option<unsafe extern "C" fn(i64) -> i64>;
}

/// A fixture's address.
pub fn addr_of(f: *const ()) -> u64 {
    f as u64
}

/// Compile the C program `source` with `flags` into `name`, once per test process (the
/// result is kept in a [`scratch_dir`] of this process's own under the build directory), and
/// return its path. Panics when the compiler fails: a test cannot run without its program.
pub fn c_program(source: &str, name: &str, flags: &[&str]) -> &'static str {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    c_program_by(&cc, source, name, flags)
}

/// [`c_program`] with compiler `cc` (`gcc`, `clang`).
pub fn c_program_by(cc: &str, source: &str, name: &str, flags: &[&str]) -> &'static str {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<String, &'static str>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(name) {
        return path;
    }
    // Under the build directory, not the system's temporary directory: a test run leaves
    // nothing behind outside the build.
    let out = scratch_dir(std::path::Path::new(env!("OUT_DIR")), "programs").join(name);
    let ok = std::process::Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"))
        .success();
    assert!(ok, "compiling {source}");
    let path: &'static str = Box::leak(out.to_string_lossy().into_owned().into_boxed_str());
    built.as_mut().expect("initialized").insert(name.to_owned(), path);
    path
}

/// A directory of this test process's own, `parent/prefix-PID`, empty when first asked for
/// in the process (one a process with the same pid left is emptied). The directories of
/// processes that have ended are removed on the way, so runs do not pile up.
pub fn scratch_dir(parent: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static MADE: Mutex<Option<HashSet<std::path::PathBuf>>> = Mutex::new(None);
    let dir = parent.join(format!("{prefix}-{}", std::process::id()));
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if made.get_or_insert_with(HashSet::new).insert(dir.clone()) {
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-')?.parse::<u32>().ok());
            let ended = pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
            if ended || entry.path() == dir {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    dir
}

/// The code of [`crafted_elf`]'s `.text`: `push %rbp; mov %rsp,%rbp; nop` x10`; pop %rbp; ret`.
pub const CRAFTED_CODE: [u8; 16] =
    [0x55, 0x48, 0x89, 0xe5, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x5d, 0xc3];

/// Write a crafted ELF object file to `path`: its `.text` holds [`CRAFTED_CODE`] (16 bytes),
/// and its symbol table claims a function `huge` at 0 of 2^40 bytes and a function `past` at
/// 8 of 108 bytes (running past the section's end).
pub fn crafted_elf(path: &std::path::Path) {
    use object::write::{Object, StandardSection, Symbol, SymbolSection};
    use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.section_id(StandardSection::Text);
    obj.append_section_data(text, &CRAFTED_CODE, 16);
    for (name, value, size) in [("huge", 0, 1u64 << 40), ("past", 8, 108)] {
        obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    std::fs::write(path, obj.write().expect("writing the crafted ELF")).expect("saving the crafted ELF");
}

/// The kernel's tracing directory, mounted first where nothing mounted it yet (as dprobe's
/// kernel engine does on a machine that boots without it): tests read it, and define another
/// tool's events there, before any dprobe ran.
pub fn tracing_dir() -> &'static str {
    const DIR: &str = "/sys/kernel/tracing";
    static MOUNTED: std::sync::Once = std::sync::Once::new();
    MOUNTED.call_once(|| {
        // Nothing mounted there: the directory reads empty. (Mounted, it may not be readable
        // at all by a user other than root.) Where it cannot be mounted (not root, no tracefs),
        // the tests that use it say so.
        if std::fs::read_dir(DIR).is_ok_and(|mut entries| entries.next().is_none()) {
            let _ = std::process::Command::new("mount")
                .args(["-t", "tracefs", "nodev", DIR])
                .stderr(std::process::Stdio::null())
                .status();
        }
    });
    DIR
}
