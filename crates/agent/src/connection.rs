//! The agent's connection to dprobe. It lives in the agent thread's own descriptor table
//! (`dprobe_inproc::own_files::PrivateTable`), where the program neither sees it nor can close
//! it. Where the kernel gives the thread no table of its own, it is a descriptor kept near the
//! top of the program's (its low numbers stay the program's) and known by its socket's inode,
//! so that a program that closes every descriptor it did not open (a daemon's
//! `close_range(3, ~0U)`, a child about to `exec`) ends the session instead of having the
//! agent read its data or write into its files (see `dprobe_inproc::own_files`).

use std::io;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

use dprobe_inproc::own_files::{self, FileId};

/// A connection to dprobe, closed on drop only if its number is still its socket.
pub(crate) struct Connection {
    stream: ManuallyDrop<UnixStream>,
    id: FileId,
}

impl Connection {
    /// Connect to dprobe's listener `name` (an abstract socket's name).
    pub(crate) fn to(name: &[u8]) -> io::Result<Connection> {
        let stream = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)?;
        let fd = own_files::keep_high(stream.into_raw_fd());
        let Some(id) = FileId::of(fd) else {
            own_files::close(fd);
            return Err(io::Error::other("the connection's descriptor is gone"));
        };
        // SAFETY: `fd` is the connected socket's descriptor, moved; nothing else owns it.
        let stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
        Ok(Connection { stream, id })
    }

    /// Whether the program closed the connection's descriptor (and may have opened a file of
    /// its own under its number): nothing more is read or written through it.
    pub(crate) fn lost(&self) -> bool {
        !self.id.is(self.stream.as_raw_fd())
    }

    /// The error a lost connection ends the session with.
    pub(crate) fn lost_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "the program closed the agent's connection")
    }
}

impl Deref for Connection {
    type Target = UnixStream;
    fn deref(&self) -> &UnixStream {
        &self.stream
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

impl io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.lost() {
            // SAFETY: dropped once, here; the number is still the connection's socket.
            unsafe { ManuallyDrop::drop(&mut self.stream) };
        }
    }
}
