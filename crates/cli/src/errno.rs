//! Error numbers: their names, and where a traced thread keeps its C `errno`.

use dprobe_arch::Addr;

/// The name of error number `n` (`ENOENT`), as in `<errno.h>` on Linux x86-64.
pub fn name(n: i64) -> Option<&'static str> {
    const NAMES: [&str; 134] = [
        "",
        "EPERM",
        "ENOENT",
        "ESRCH",
        "EINTR",
        "EIO",
        "ENXIO",
        "E2BIG",
        "ENOEXEC",
        "EBADF",
        "ECHILD",
        "EAGAIN",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "ENOTBLK",
        "EBUSY",
        "EEXIST",
        "EXDEV",
        "ENODEV",
        "ENOTDIR",
        "EISDIR",
        "EINVAL",
        "ENFILE",
        "EMFILE",
        "ENOTTY",
        "ETXTBSY",
        "EFBIG",
        "ENOSPC",
        "ESPIPE",
        "EROFS",
        "EMLINK",
        "EPIPE",
        "EDOM",
        "ERANGE",
        "EDEADLK",
        "ENAMETOOLONG",
        "ENOLCK",
        "ENOSYS",
        "ENOTEMPTY",
        "ELOOP",
        "",
        "ENOMSG",
        "EIDRM",
        "ECHRNG",
        "EL2NSYNC",
        "EL3HLT",
        "EL3RST",
        "ELNRNG",
        "EUNATCH",
        "ENOCSI",
        "EL2HLT",
        "EBADE",
        "EBADR",
        "EXFULL",
        "ENOANO",
        "EBADRQC",
        "EBADSLT",
        "",
        "EBFONT",
        "ENOSTR",
        "ENODATA",
        "ETIME",
        "ENOSR",
        "ENONET",
        "ENOPKG",
        "EREMOTE",
        "ENOLINK",
        "EADV",
        "ESRMNT",
        "ECOMM",
        "EPROTO",
        "EMULTIHOP",
        "EDOTDOT",
        "EBADMSG",
        "EOVERFLOW",
        "ENOTUNIQ",
        "EBADFD",
        "EREMCHG",
        "ELIBACC",
        "ELIBBAD",
        "ELIBSCN",
        "ELIBMAX",
        "ELIBEXEC",
        "EILSEQ",
        "ERESTART",
        "ESTRPIPE",
        "EUSERS",
        "ENOTSOCK",
        "EDESTADDRREQ",
        "EMSGSIZE",
        "EPROTOTYPE",
        "ENOPROTOOPT",
        "EPROTONOSUPPORT",
        "ESOCKTNOSUPPORT",
        "EOPNOTSUPP",
        "EPFNOSUPPORT",
        "EAFNOSUPPORT",
        "EADDRINUSE",
        "EADDRNOTAVAIL",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "ECONNABORTED",
        "ECONNRESET",
        "ENOBUFS",
        "EISCONN",
        "ENOTCONN",
        "ESHUTDOWN",
        "ETOOMANYREFS",
        "ETIMEDOUT",
        "ECONNREFUSED",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "EALREADY",
        "EINPROGRESS",
        "ESTALE",
        "EUCLEAN",
        "ENOTNAM",
        "ENAVAIL",
        "EISNAM",
        "EREMOTEIO",
        "EDQUOT",
        "ENOMEDIUM",
        "EMEDIUMTYPE",
        "ECANCELED",
        "ENOKEY",
        "EKEYEXPIRED",
        "EKEYREVOKED",
        "EKEYREJECTED",
        "EOWNERDEAD",
        "ENOTRECOVERABLE",
        "ERFKILL",
        "",
    ];
    usize::try_from(n).ok().and_then(|i| NAMES.get(i)).copied().filter(|s| !s.is_empty())
}

/// How to find a thread's `errno`: glibc's `__errno_location` is
/// `mov GOT(%rip),%rax; add %fs:0,%rax; ret`, so `errno` lives at the thread pointer plus
/// the offset stored in that GOT entry, the same for every thread.
pub fn tls_offset(
    read: &mut dyn FnMut(Addr, usize) -> Result<Vec<u8>, String>,
    errno_location: Addr,
) -> Result<u64, String> {
    let code = read(errno_location, 20)?;
    let start = if code[..4] == [0xf3, 0x0f, 0x1e, 0xfa] { 4 } else { 0 }; // endbr64
    let c = &code[start..];
    let add_fs = [0x64, 0x48, 0x03, 0x04, 0x25, 0, 0, 0, 0];
    if c[..3] != [0x48, 0x8b, 0x05] || c[7..16] != add_fs {
        return Err("this libc's __errno_location is not the usual `mov GOT(%rip),%rax; add %fs:0,%rax`".into());
    }
    let disp = i32::from_le_bytes(c[3..7].try_into().expect("4 bytes")) as i64;
    let got = errno_location.0.wrapping_add((start + 7) as u64).wrapping_add(disp as u64);
    let word = read(Addr(got), 8)?;
    Ok(u64::from_le_bytes(word[..8].try_into().map_err(|_| "short read of the GOT entry")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_c_library() {
        for (n, expected) in
            [(libc::ENOENT, "ENOENT"), (libc::EACCES, "EACCES"), (libc::ENOTRECOVERABLE, "ENOTRECOVERABLE")]
        {
            assert_eq!(name(n as i64), Some(expected));
        }
        for n in 1..=133 {
            if let Some(s) = name(n) {
                // SAFETY: strerror's result is only read, before any other call.
                let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(n as i32)) }.to_string_lossy().into_owned();
                assert!(!text.starts_with("Unknown error"), "{s} ({n}) is a real error: {text}");
            }
        }
        assert_eq!((name(0), name(41), name(134), name(-2)), (None, None, None, None));
    }
}
