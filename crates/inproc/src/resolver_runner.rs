//! What the loader chose for an indirect function whose library records no choice (libc's
//! `strstr`, `wcsrchr`, `__memset_chk`: nothing inside libc calls them through its own GOT):
//! the function's resolver run in this process, as the loader runs it for other objects'
//! calls (see `dprobe_sym`'s `ifunc` module). The engine gives [`run_resolver`] to
//! [`dprobe_sym::run_resolvers_with`] when it starts; so can any process that resolves probe
//! targets (the `dprobe` tool, for the engines that place probes from outside).
//!
//! Only the C library's and the loader's resolvers are run. glibc's loader calls an x86-64
//! resolver with no argument, and theirs only read the processor's features the loader
//! recorded at start-up; both objects were relocated before the program's `main`. Another
//! library's resolver may do anything, or run before its library is relocated (a library
//! being loaded is probed before its relocation), and is left alone.

use dprobe_arch::Addr;

/// The address the resolver at `resolver`, in the loaded object `object` (as this process's
/// maps name it), chooses; `None` for an object other than the C library or the loader, or
/// an address that is not that object's code here.
pub fn run_resolver(object: &str, resolver: u64) -> Option<u64> {
    if !dprobe_sym::is_c_library_or_loader(object) {
        return None;
    }
    let maps = dprobe_sym::read_maps().ok()?;
    let code = &maps[dprobe_sym::mapping_index(&maps, Addr(resolver))?];
    if !code.exec || code.path.as_deref() != Some(object) {
        return None;
    }
    // SAFETY: `resolver` is the start of an indirect function's resolver (the caller read it
    // from the object's symbol table) in the executable mapping of the C library or the
    // loader, which stays mapped for the life of the process and was relocated before the
    // program started. glibc's x86-64 loader calls such a resolver with no argument and
    // takes what it returns as the address (`elf_ifunc_invoke`); these resolvers read only
    // the processor's features the loader recorded, write nothing and take no lock.
    let resolve: extern "C" fn() -> usize = unsafe { std::mem::transmute(resolver as usize) };
    Some(resolve() as u64)
}
