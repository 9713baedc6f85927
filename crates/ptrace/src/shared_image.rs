//! One sealed copy of a library image, opened by every process dprobe loads it into.
//!
//! A library given as bytes (dprobe's agent, 3.4 MB) is written into a memory file of the
//! process it is loaded into. Following a command into every program it executes, that copy
//! was written again for each program: a millisecond and a half of dprobe's time each, and as
//! many fresh pages for the loader to fault in. dprobe now writes the image once, into a
//! memory file of its own sealed against any change (`F_SEAL_WRITE`, `F_SEAL_SHRINK`,
//! `F_SEAL_GROW`, `F_SEAL_SEAL`), and each process opens that file through
//! `/proc/<dprobe>/fd/<n>` instead: the same pages, read-only for everyone.
//!
//! The kernel lets a process open another's descriptors only with read access to it as
//! `ptrace` sees it ([`may_open_files_of_dprobe`]): a process of another user (dprobe run
//! as root, a program that dropped to `nobody`) gets its own copy as before.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// `memfd_create`'s flag for a file that may be mapped as code whatever `vm.memfd_noexec`
/// says (Linux 6.3); older kernels refuse the flag, and their memory files are executable.
pub(crate) const MFD_EXEC: libc::c_uint = 0x10;
/// `memfd_create`'s flag for a file never mapped as code (Linux 6.3).
const MFD_NOEXEC_SEAL: libc::c_uint = 0x08;

/// A library's bytes, and dprobe's sealed memory file holding them, made when first needed.
#[derive(Debug)]
pub struct SharedImage {
    bytes: Vec<u8>,
    name: String,
    file: OnceLock<Option<OwnedFd>>,
}

impl SharedImage {
    /// The library `bytes`, whose memory files are named `name` (as `/proc/PID/maps` shows
    /// them: `/memfd:NAME (deleted)`).
    pub fn new(bytes: Vec<u8>, name: &str) -> SharedImage {
        SharedImage { bytes, name: name.to_owned(), file: OnceLock::new() }
    }

    /// The library's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The name of its memory files.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path another process opens dprobe's sealed copy by, if it could be made.
    pub(crate) fn path(&self) -> Option<String> {
        let file = self.file.get_or_init(|| sealed_memory_file(&self.bytes, &self.name, true)).as_ref()?;
        Some(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()))
    }
}

/// A new memory file of dprobe's holding `bytes`, sealed against any change, named `name`
/// (`/memfd:NAME` in `/proc/PID/maps`), that may be mapped as code where `code`; closed at
/// dprobe's `exec`.
pub fn sealed_memory_file(bytes: &[u8], name: &str, code: bool) -> Option<OwnedFd> {
    let name = CString::new(name).ok()?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Code where asked for, else data that can never be (which `vm.memfd_noexec = 2` asks
    // for); older kernels refuse either flag, and their memory files are executable.
    let first = if code { MFD_EXEC } else { MFD_NOEXEC_SEAL };
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor, or -1.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | first) };
    if fd < 0 {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).ok()?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on a descriptor this function owns; it changes no memory of ours.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return None;
    }
    Some(file.into())
}

/// Whether process `pid` may open dprobe's descriptors through `/proc/<dprobe>/fd`: the
/// kernel asks for `ptrace` read access to dprobe (`PTRACE_MODE_READ_FSCREDS`), which a
/// process has when its file-system user and group ids are each of dprobe's real, effective
/// and saved ids and dprobe is dumpable, or when it holds `CAP_SYS_PTRACE`. (A security
/// module may refuse it still: the open then fails, and the process gets a copy.)
pub(crate) fn may_open_files_of_dprobe(pid: i32) -> bool {
    let (Some(theirs), Some(ours)) = (ids_of(&format!("/proc/{pid}/status")), ids_of("/proc/self/status")) else {
        return false;
    };
    const CAP_SYS_PTRACE: u32 = 19;
    if theirs.effective_caps >> CAP_SYS_PTRACE & 1 == 1 {
        return true;
    }
    // SAFETY: PR_GET_DUMPABLE takes no pointer and changes nothing.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } == 1;
    dumpable
        && ours.uids[..3].iter().all(|&u| u == theirs.uids[3])
        && ours.gids[..3].iter().all(|&g| g == theirs.gids[3])
}

/// A process's user and group ids (real, effective, saved, file-system) and effective
/// capabilities, from its `status` file.
struct Ids {
    uids: [u32; 4],
    gids: [u32; 4],
    effective_caps: u64,
}

fn ids_of(status: &str) -> Option<Ids> {
    let text = std::fs::read_to_string(status).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let four = |name: &str| -> Option<[u32; 4]> {
        let ids: Vec<u32> = field(name)?.split_whitespace().map(|n| n.parse().ok()).collect::<Option<_>>()?;
        ids.try_into().ok()
    };
    let effective_caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(Ids { uids: four("Uid:")?, gids: four("Gid:")?, effective_caps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_sealed_copy_holds_the_bytes_and_refuses_every_change() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let image = SharedImage::new(bytes.clone(), "dprobe-shared-image-test");
        let path = image.path().expect("a memory file");
        assert_eq!(image.path().as_deref(), Some(path.as_str()), "made once");
        let mut read = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, bytes);
        let link = std::fs::read_link(&path).unwrap();
        assert_eq!(link.to_string_lossy(), "/memfd:dprobe-shared-image-test (deleted)");
        // Opened again for writing (as another process could), it takes no byte.
        let mut writable = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(writable.write_all(b"changed").is_err(), "sealed against writes");
        assert!(writable.set_len(1).is_err(), "sealed against shrinking");
        let mut again = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn a_process_of_dprobe_s_own_ids_may_open_its_files() {
        assert!(may_open_files_of_dprobe(std::process::id() as i32));
        assert!(!may_open_files_of_dprobe(-1), "no such process");
    }
}
