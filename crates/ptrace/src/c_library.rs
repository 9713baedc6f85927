//! Which loaded objects are the C library and the dynamic loader, by file name: the objects
//! whose locks a thread loading a library with `dlopen` must not hold.

use dprobe_arch::Addr;
use dprobe_sym::Mapping;

/// A path's last component.
pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether the file at `path` is the C library (`libc.so.6`, `libc-2.31.so`), or its threads
/// library before glibc 2.34 (`libpthread.so.0`); not `libc-client.so` or `libcrypto`.
pub(crate) fn is_c_library(path: &str) -> bool {
    let name = file_name(path);
    ["libc.so", "libc-2.", "libpthread.so", "libpthread-2."].iter().any(|p| name.starts_with(p))
}

/// Whether the file at `path` is the dynamic loader (`ld-linux-x86-64.so.2`, `ld-2.31.so`),
/// or musl's, which is its C library too (`ld-musl-x86_64.so.1`).
pub(crate) fn is_loader(path: &str) -> bool {
    file_name(path).starts_with("ld-")
}

/// The path of the object mapped at `addr`, if a file is.
pub(crate) fn object_at(maps: &[Mapping], addr: u64) -> Option<&str> {
    maps.iter().find(|m| m.contains(Addr(addr)))?.path.as_deref()
}
