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
    /// Shared with the file (`s`), not a private copy on write (`p`): a write there changes
    /// the file itself.
    pub shared: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// The file's device `(major, minor)` and inode (zeros for anonymous memory): a path may
    /// name another file by now.
    pub device: (u32, u32),
    /// See `device`.
    pub inode: u64,
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

/// The index of the mapping of `maps` (in address order, as [`read_maps`] gives them) that
/// holds `addr`: a binary search (a process may have thousands of mappings, and a batch of
/// probes asks for each of thousands of addresses).
pub fn mapping_index(maps: &[Mapping], addr: Addr) -> Option<usize> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).is_some_and(|m| m.contains(addr)).then_some(i)
}

/// The current mappings of process `pid`, in address order.
pub fn read_maps_of(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

/// Page-aligned addresses of free pages within `reach` bytes of `near`, nearest first: the
/// page of each gap between mappings that is closest to `near`. Used to place out-of-line
/// slots where a `rel32` from the probed code reaches them.
pub fn free_pages_near(maps: &[Mapping], near: Addr, reach: u64) -> Vec<Addr> {
    const PAGE: u64 = 4096;
    // The lowest address the kernel lets programs map (the usual `vm.mmap_min_addr`) and the
    // top of user space.
    const MIN_ADDR: u64 = 0x10000;
    const TOP: u64 = 0x7fff_ffff_f000;
    let mut candidates = Vec::new();
    let mut prev_end = MIN_ADDR;
    let starts = maps.iter().map(|m| (m.start.0, m.end.0)).chain(std::iter::once((TOP, TOP)));
    for (start, end) in starts {
        let (gap_start, gap_end) = (prev_end.max(MIN_ADDR), start.min(TOP));
        prev_end = prev_end.max(end);
        if gap_end < gap_start + PAGE {
            continue;
        }
        let best = if near.0 < gap_start {
            gap_start
        } else if near.0 >= gap_end {
            gap_end - PAGE
        } else {
            near.0 & !(PAGE - 1)
        };
        if best.abs_diff(near.0) < reach {
            candidates.push(Addr(best));
        }
    }
    candidates.sort_by_key(|c| c.0.abs_diff(near.0));
    candidates
}

/// Parse the text of a maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// The ranges `(start, end)` of the mappings of `text` (a `/proc/PID/maps`) that may be a
/// thread's stack: readable and writable, anonymous or `[stack]`. Allocates nothing: it runs
/// while the C library's allocator may be probed.
pub fn stack_ranges(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().filter_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.as_bytes();
        let path = fields.nth(3).map(str::trim).unwrap_or_default();
        let stack = perms.starts_with(b"rw") && (path.is_empty() || path == "[stack]");
        stack.then_some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
    })
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let device = (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
    Some(Mapping {
        start: Addr(u64::from_str_radix(start, 16).ok()?),
        end: Addr(u64::from_str_radix(end, 16).ok()?),
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        offset,
        device,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_ranges_are_the_writable_anonymous_mappings_and_the_main_stack() {
        let text = "400000-401000 r-xp 00000000 fe:01 1 /a\n\
                    403000-500000 rw-p 00000000 00:00 0\n\
                    500000-501000 rw-p 00000000 00:00 0 [heap]\n\
                    600000-601000 r--p 00000000 00:00 0\n\
                    700000-702000 rw-p 00001000 fe:01 1 /a\n\
                    7ffd0000-7ffe0000 rw-p 00000000 00:00 0                          [stack]\n";
        let stacks: Vec<(u64, u64)> = stack_ranges(text).collect();
        assert_eq!(stacks, [(0x403000, 0x500000), (0x7ffd_0000, 0x7ffe_0000)]);
        let parsed: Vec<(u64, u64)> = parse_maps(text)
            .iter()
            .filter(|m| m.read && m.write && m.path.as_deref().is_none_or(|p| p == "[stack]"))
            .map(|m| (m.start.0, m.end.0))
            .collect();
        assert_eq!(stacks, parsed, "the same as the full parse says");
    }

    #[test]
    fn the_mapping_of_an_address_is_found_by_address() {
        let maps = parse_maps(
            "400000-402000 r-xp 00000000 fe:01 1 /a\n\
             403000-404000 rw-p 00000000 00:00 0\n\
             404000-405000 r-xp 00001000 fe:01 2 /b\n",
        );
        let at = |a: u64| mapping_index(&maps, Addr(a));
        assert_eq!([at(0x400000), at(0x401fff), at(0x403000), at(0x404abc)], [Some(0), Some(0), Some(1), Some(2)]);
        assert_eq!([at(0x3fffff), at(0x402000), at(0x402fff), at(0x405000)], [None; 4], "in no mapping");
        for a in (0x3ff000..0x406000).step_by(0x7f) {
            assert_eq!(at(a), maps.iter().position(|m| m.contains(Addr(a))), "{a:#x}: as a linear search says");
        }
    }

    #[test]
    fn free_pages_nearest_first() {
        let m = parse_maps(
            "400000-401000 r-xp 00000000 fe:01 1 /a\n\
             403000-500000 rw-p 00000000 00:00 0\n",
        );
        let free = free_pages_near(&m, Addr(0x400800), 1 << 30);
        assert_eq!(free[0], Addr(0x401000), "the gap right after the code");
        assert_eq!(free[1], Addr(0x3ff000), "then the page below it");
        assert!(free.iter().all(|a| !m.iter().any(|x| x.contains(*a))));
        assert!(free_pages_near(&m, Addr(0x400800), 0x100).is_empty(), "nothing that close");
    }

    #[test]
    fn parses_file_and_anonymous_lines() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a01000 r-xp 00001000 fe:01 1234                       /usr/bin/cat\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
             7ffd3000-7ffd4000 rw-p 00000000 00:00 0 \n\
             7ffd5000-7ffd6000 r-xs 00000000 fe:01 99                         /tmp/shared\n",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, Addr(0x55d0c0a00000));
        assert!(m[0].exec && !m[0].write);
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].path.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(m[1].path.as_deref(), Some("[stack]"));
        assert_eq!(m[2].path, None);
        assert!(!m[0].shared && m[3].shared);
    }
}
