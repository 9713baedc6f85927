//! The images of files dprobe hands over before the files' reading (`engine/images.rs`),
//! mapped read-only: the agent reads the C library's bytes from dprobe's copy instead of
//! reading the file again.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use dprobe_sym::FileBytes;

use crate::connection::Connection;
use crate::wire::MAX_IMAGES;

/// The seals that make an image safe to map: it cannot shrink (a read past its end would be
/// a `SIGBUS` in the program) nor change.
const NEEDED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;

/// Receive dprobe's images, by their numbers; `None` where one cannot be mapped (the file
/// is read instead). `Ok(None)`: dprobe went away.
pub(crate) fn receive(sock: &Connection) -> io::Result<Option<Vec<Option<FileBytes>>>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_IMAGES]);
    let msg = loop {
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    if msg.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // Where the agent's thread has no descriptor table of its own, away from the
            // program's numbers until they are closed, once mapped.
            let high = received.into_iter().map(dprobe_inproc::own_files::keep_high);
            // SAFETY: the kernel just gave us these descriptors (moved high, the old number
            // closed); nothing else owns them.
            fds.extend(high.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if byte != *b"I" {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected message"));
    }
    Ok(Some(fds.into_iter().map(mapped).collect()))
}

/// The image in `fd`, mapped read-only, if it is sealed against shrinking and writes.
fn mapped(fd: OwnedFd) -> Option<FileBytes> {
    // SAFETY: F_GET_SEALS reads nothing of ours.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & NEEDED_SEALS != NEEDED_SEALS {
        return None;
    }
    let file = File::from(fd);
    // SAFETY: the file is sealed against shrinking and writes (checked above, and seals are
    // never taken away): every byte of the mapping stays readable and unchanged for as long
    // as it lives. The descriptor can go once it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    Some(FileBytes::new(map))
}
