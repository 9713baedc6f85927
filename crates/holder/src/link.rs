//! The pipe from the front to the holder: each stop signal passed on is one fixed-size
//! message; the pipe's end is the front's end.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

/// A stop signal a process sent the front, passed on to the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The signal's number.
    pub signal: i32,
    /// The pid of the process that sent it.
    pub sender: i32,
}

impl Forwarded {
    const SIZE: usize = 8;

    fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut message = [0u8; Self::SIZE];
        message[..4].copy_from_slice(&self.signal.to_ne_bytes());
        message[4..].copy_from_slice(&self.sender.to_ne_bytes());
        message
    }

    fn from_bytes(message: [u8; Self::SIZE]) -> Forwarded {
        let [s0, s1, s2, s3, p0, p1, p2, p3] = message;
        Forwarded { signal: i32::from_ne_bytes([s0, s1, s2, s3]), sender: i32::from_ne_bytes([p0, p1, p2, p3]) }
    }

    /// Send it down the pipe. Writes of this size to a pipe are atomic: messages never mix.
    pub(crate) fn send(self, pipe: &mut File) -> io::Result<()> {
        pipe.write_all(&self.to_bytes())
    }
}

/// The holder's view of its front: the stop signals passed on, in order, then the front's
/// end.
#[derive(Debug)]
pub struct Front {
    pid: i32,
    pipe: File,
}

impl Front {
    pub(crate) fn new(pid: i32, reading: OwnedFd) -> Front {
        Front { pid, pipe: File::from(reading) }
    }

    /// The front's pid (the one the user knows, whoever adopts the holder later).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Iterator for Front {
    type Item = Forwarded;

    /// Blocks until the front passes a signal on (`Some`) or has ended (`None`, for good).
    fn next(&mut self) -> Option<Forwarded> {
        let mut message = [0u8; Forwarded::SIZE];
        self.pipe.read_exact(&mut message).ok()?;
        Some(Forwarded::from_bytes(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::unistd::pipe2;

    #[test]
    fn signals_come_in_order_then_the_end() {
        let (reading, writing) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut writing = File::from(writing);
        let sent = [Forwarded { signal: 15, sender: 4242 }, Forwarded { signal: 2, sender: -7 }];
        for m in sent {
            m.send(&mut writing).unwrap();
        }
        drop(writing);
        let front = Front::new(99, reading);
        assert_eq!(front.pid(), 99);
        assert_eq!(front.collect::<Vec<_>>(), sent);
    }

    #[test]
    fn a_torn_message_is_the_end() {
        let (reading, writing) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut writing = File::from(writing);
        writing.write_all(&[1, 0, 0]).unwrap();
        drop(writing);
        assert_eq!(Front::new(1, reading).next(), None);
    }
}
