//! `/proc/self/maps`: what is mapped where, with which permissions.

use std::io;

use dprobe_arch::Addr;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: Addr,
    /// End (exclusive).
    pub end: Addr,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// The file or pseudo-file (`[stack]`, `[vdso]`), if any.
    pub path: Option<String>,
}

impl Mapping {
    /// Whether `addr` is inside.
    pub fn contains(&self, addr: Addr) -> bool {
        addr >= self.start && addr < self.end
    }

    /// `r-xp`-style permissions, for messages.
    pub fn perms(&self) -> String {
        format!(
            "{}{}{}p",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.exec { 'x' } else { '-' }
        )
    }
}

/// The current mappings of this process, in address order.
pub fn read_maps() -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string("/proc/self/maps")?))
}

/// The current mappings of process `pid`, in address order.
pub fn read_maps_of(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

/// Parse the text of a maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
    Some(Mapping {
        start: Addr(u64::from_str_radix(start, 16).ok()?),
        end: Addr(u64::from_str_radix(end, 16).ok()?),
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        offset,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_lines() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a01000 r-xp 00001000 fe:01 1234                       /usr/bin/cat\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
             7ffd3000-7ffd4000 rw-p 00000000 00:00 0 \n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].start, Addr(0x55d0c0a00000));
        assert!(m[0].exec && !m[0].write);
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].path.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(m[1].path.as_deref(), Some("[stack]"));
        assert_eq!(m[2].path, None);
    }
}
