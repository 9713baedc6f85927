//! A probe at an address where a probe was before, in code that is not the same any more: a
//! library unloaded and another mapped where it was (both shaped alike, so that their
//! functions start at the same offset with the same first byte). The new probe runs the new
//! code, never what dprobe kept of the old one (the instruction an `int3` site displaced, a
//! jump's detour).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Addr, Kprobe, PreAction};

/// Taken by each test: one maps a library again where it unmapped one, which another test's
/// mapping could take meanwhile.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Build the shared library `name` from C `body` (without `endbr64` entries, so that both
/// libraries' functions start with the same byte whatever the compiler's default).
fn library(name: &str, body: &str) -> &'static str {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = dprobe_test_fixtures::scratch_dir(dir, "replaced").join(format!("{name}.c"));
    std::fs::write(&src, body).unwrap();
    dprobe_test_fixtures::c_program(
        src.to_str().unwrap(),
        &format!("{name}.so"),
        &["-O2", "-shared", "-fPIC", "-fcf-protection=none"],
    )
}

/// Map the whole file at `path`, `r-x`, at `at` (or where the kernel chooses): its address.
fn map(path: &str, len: usize, at: Option<usize>) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let flags = libc::MAP_PRIVATE | if at.is_some() { libc::MAP_FIXED_NOREPLACE } else { 0 };
    // SAFETY: a new private mapping of a file we opened, never over existing memory.
    let p = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(
            at.unwrap_or(0) as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            flags,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    assert!(at.is_none_or(|a| a == p as usize));
    p as usize
}

/// The offset of function `name` in the shared library at `path` (its address when the file is
/// mapped whole at 0: code at the same offset in the file and in memory, checked by the caller).
fn offset_of(path: &str, name: &str) -> u64 {
    dprobe_sym::Symbols::load_file(path).unwrap().find(name).unwrap().start.0
}

/// A probe at `at` counting its hits in `hits`, jump-optimized or not as asked (`what` names it
/// in a failed assertion).
fn counted(at: Addr, optimize: bool, hits: &'static AtomicU64, what: &str) -> dprobe_inproc::Probe {
    let k = Kprobe::addr(at).pre(move |_| {
        hits.fetch_add(1, Relaxed);
        PreAction::Continue
    });
    let p = register(if optimize { k } else { k.no_optimize() }).unwrap();
    assert_eq!(p.optimized().is_ok(), optimize, "{what}: {:?}", p.optimized());
    p
}

#[test]
fn a_probe_where_other_code_was_probed_runs_the_new_code() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let x = library("libreplaced_x", "long xfunc(long v) { return v * 9 + 2; }\n");
    let y = library("libreplaced_y", "long yfunc(long v) { return v * 5 + 1; }\n");
    let (off, len) =
        (offset_of(x, "xfunc"), std::fs::metadata(x).unwrap().len().max(std::fs::metadata(y).unwrap().len()));
    assert_eq!(offset_of(y, "yfunc"), off, "both functions at the same offset");
    let bytes = |path: &str| std::fs::read(path).unwrap()[off as usize..off as usize + 6].to_vec();
    let (xb, yb) = (bytes(x), bytes(y));
    assert!(xb[0] == yb[0] && xb != yb, "the same first byte, other code: {xb:02x?} {yb:02x?}");
    static HITS: AtomicU64 = AtomicU64::new(0);
    for optimize in [false, true] {
        let base = map(x, len as usize, None);
        let at = Addr(base as u64 + off);
        // SAFETY: the function's code, mapped whole and executable, takes and returns a long.
        let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(at.0 as usize) };
        let probe = |what: &str| counted(at, optimize, &HITS, what);
        HITS.store(0, Relaxed);
        let p = probe("xfunc");
        assert_eq!(f(3), 29);
        drop(p);
        // SAFETY: unmaps the mapping made above, whose code no thread runs any more.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len as usize) }, 0);
        map(y, len as usize, Some(base));
        assert_eq!(f(3), 16, "untraced");
        let p = probe("yfunc");
        assert_eq!(f(3), 16, "optimize: {optimize}: the new code runs under the new probe");
        assert_eq!(HITS.load(Relaxed), 2);
        drop(p);
        assert_eq!(f(3), 16);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len as usize) }, 0);
    }
}

#[test]
fn a_probe_by_name_goes_where_its_library_is_now() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Mapped, probed by name, unmapped, then mapped again elsewhere: the name is resolved
    // where the library is now, not where it was when its symbols were first read. (A library
    // of its own: the other test maps its libraries meanwhile.)
    let x = library("libreplaced_n", "long xfunc(long v) { return v * 9 + 2; }\n");
    let (off, len) = (offset_of(x, "xfunc"), std::fs::metadata(x).unwrap().len() as usize);
    let name = format!("{x}:xfunc");
    static HITS: AtomicU64 = AtomicU64::new(0);
    let mut before = None;
    for round in 0..2 {
        // The second time the first mapping's place is taken first, so that the library is
        // mapped elsewhere.
        // SAFETY: a new anonymous mapping, never over existing memory.
        let hold = (round == 1).then(|| unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        });
        let base = map(x, len, None);
        let at = Addr(base as u64 + off);
        assert_ne!(Some(at), before);
        // SAFETY: the function's code, mapped whole and executable, takes and returns a long.
        let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(at.0 as usize) };
        HITS.store(0, Relaxed);
        let p = register(Kprobe::symbol(&name).pre(|_| {
            HITS.fetch_add(1, Relaxed);
            PreAction::Continue
        }))
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(p.addr(), at, "round {round}");
        assert_eq!(f(3), 29);
        assert_eq!(HITS.load(Relaxed), 1, "round {round}");
        drop(p);
        // SAFETY: unmaps the mapping made above, whose code no thread runs any more.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len) }, 0);
        if let Some(hold) = hold {
            // SAFETY: unmaps the anonymous mapping made above, which nothing uses.
            assert_eq!(unsafe { libc::munmap(hold, len) }, 0);
        }
        before = Some(at);
    }
}

#[test]
fn a_library_unmapped_under_its_probe_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The program unloads a library while a probe is in it (no loader notification came in
    // time): removing the probe then writes nothing and leaves no mapping of the file (the
    // read-only alias of a jump's page goes), and the same library mapped again at the same
    // place is probed afresh (the site's `int3` went with the old mapping).
    let x = library("libreplaced_u", "long xfunc(long v) { return v * 9 + 2; }\n");
    let (off, len) = (offset_of(x, "xfunc"), std::fs::metadata(x).unwrap().len() as usize);
    let mapped = || std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| l.ends_with(x));
    static HITS: AtomicU64 = AtomicU64::new(0);
    for optimize in [true, false] {
        let base = map(x, len, None);
        let at = Addr(base as u64 + off);
        // SAFETY: the function's code, mapped whole and executable, takes and returns a long.
        let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(at.0 as usize) };
        let probe = || counted(at, optimize, &HITS, "xfunc");
        HITS.store(0, Relaxed);
        let p = probe();
        assert_eq!(f(3), 29);
        // SAFETY: unmaps the mapping made above, under the probe, while no thread runs there.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len) }, 0);
        drop(p);
        assert!(!mapped(), "optimize: {optimize}: a mapping of the file is left");
        map(x, len, Some(base));
        let p = probe();
        assert_eq!(f(3), 29);
        assert_eq!(HITS.load(Relaxed), 2, "optimize: {optimize}");
        drop(p);
        // SAFETY: as above, with no probe left.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len) }, 0);
        assert!(!mapped());
    }
}

#[test]
fn a_probe_in_a_file_rewritten_in_place_runs_the_new_code() {
    // The same file (the same inode) mapped at the same place, but rewritten in between (a
    // plugin rebuilt over itself): the new probe runs the new bytes.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let x = library("libreplaced_x", "long xfunc(long v) { return v * 9 + 2; }\n");
    let y = library("libreplaced_y", "long yfunc(long v) { return v * 5 + 1; }\n");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dprobe_test_fixtures::scratch_dir(dir, "rewritten").join("librewritten.so");
    std::fs::copy(x, &file).unwrap();
    let path = file.to_str().unwrap();
    let (off, len) =
        (offset_of(x, "xfunc"), std::fs::metadata(x).unwrap().len().max(std::fs::metadata(y).unwrap().len()));
    static HITS: AtomicU64 = AtomicU64::new(0);
    for optimize in [false, true] {
        std::fs::write(&file, std::fs::read(x).unwrap()).unwrap();
        let base = map(path, len as usize, None);
        let at = Addr(base as u64 + off);
        // SAFETY: the function's code, mapped whole and executable, takes and returns a long.
        let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(at.0 as usize) };
        HITS.store(0, Relaxed);
        let p = counted(at, optimize, &HITS, "before");
        assert_eq!(f(3), 29);
        drop(p);
        // SAFETY: unmaps the mapping made above, whose code no thread runs any more.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len as usize) }, 0);
        // Written over in place: the same inode, other bytes.
        let inode = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&file);
        std::fs::write(&file, std::fs::read(y).unwrap()).unwrap();
        assert_eq!(inode(&file), before);
        map(path, len as usize, Some(base));
        let p = counted(at, optimize, &HITS, "after");
        assert_eq!(f(3), 16, "optimize: {optimize}: the new bytes run under the new probe");
        assert_eq!(HITS.load(Relaxed), 2);
        drop(p);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len as usize) }, 0);
    }
}
