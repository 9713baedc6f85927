//! What the loader chose for an indirect function whose library records no choice (libc's
//! `strstr`, `wcsrchr`, `__memset_chk`: nothing inside libc calls them through its own GOT):
//! the function's resolver run in this process, as the loader runs it for other objects'
//! calls (see `dprobe_sym`'s `ifunc` module). The engine gives [`run_resolver`] to
//! [`dprobe_sym::run_resolvers_with`] when it starts; so can any process that resolves probe
//! targets (the `dprobe` tool, for the engines that place probes from outside).
//!
//! Only the resolvers of glibc's own objects are run: the C library's, the loader's and the
//! maths library's (`libm`'s `floor`, `sin`, `exp`: only the program's own calls choose
//! them). glibc's loader calls an x86-64 resolver with no argument, and theirs only read the
//! processor's features the loader recorded at start-up, through a GOT slot `dprobe_sym`
//! checks is filled (a library being loaded is mapped, and may be probed, before it is
//! relocated). Another library's resolver may do anything, and is left alone.

use dprobe_arch::Addr;

/// The address the resolver at `resolver`, in the loaded object `object` (as this process's
/// maps name it), chooses; `None` for an object other than glibc's (see the module's
/// documentation), or an address that is not that object's code here.
pub fn run_resolver(object: &str, resolver: u64) -> Option<u64> {
    if !dprobe_sym::resolvers_read_only_cpu_features(object) || !never_unloaded(object) {
        return None;
    }
    let maps = dprobe_sym::read_maps().ok()?;
    let code = &maps[dprobe_sym::mapping_index(&maps, Addr(resolver))?];
    if !code.exec || code.path.as_deref() != Some(object) {
        return None;
    }
    // SAFETY: `resolver` is the start of an indirect function's resolver (the caller read it
    // from the object's symbol table) in the executable mapping of one of glibc's objects,
    // which the caller found relocated and which is never unloaded (`never_unloaded`).
    // glibc's x86-64 loader calls such a resolver with no argument and takes what it returns
    // as the address (`elf_ifunc_invoke`); these resolvers read only the processor's features
    // the loader recorded, write nothing and take no lock.
    let resolve: extern "C" fn() -> usize = unsafe { std::mem::transmute(resolver as usize) };
    Some(resolve() as u64)
}

/// Whether `object` stays loaded for the life of this process: the C library and the loader,
/// and the libraries the program itself names as needed (`libm.so.6` for dprobe and every
/// Rust program, and for Python): the loader never unloads those. A `libm` a program loads
/// with `dlopen` may be unloaded by another of its threads while its resolver would run.
fn never_unloaded(object: &str) -> bool {
    static NEEDED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if dprobe_sym::is_c_library_or_loader(object) {
        return true;
    }
    let needed = NEEDED.get_or_init(|| dprobe_sym::needed_libraries("/proc/self/exe".as_ref()).unwrap_or_default());
    let file = object.rsplit('/').next().unwrap_or(object);
    needed.iter().any(|n| n == file)
}
