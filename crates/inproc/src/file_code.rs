//! The bytes a jump replaces, compared with the file the code is mapped from just before the
//! jump goes in (its page already writable, see `code_pages.rs`). A difference is another
//! tool's work: a debugger's or a kernel uprobe's `int3`, or another instrumentation
//! library's hook, made before dprobe read the code. The jump would hide it, and its owner
//! taking it away would write over the jump: the site stays on `int3`, with the reason. (A
//! uprobe registered after dprobe read the code and before the page became writable is in the
//! jump's first five bytes, where each instruction of the window starts: the patching step's
//! own check of the bytes it replaces finds it.)
//!
//! Anonymous code (a JIT's) has no file to compare with, nor can a kernel uprobe be in it; a
//! file that cannot be opened as the one mapped (deleted, replaced, unreadable) is not
//! compared either: the page being writable still keeps later uprobes off the jump. The
//! windows of one file close together are read at once: a batch of thousands of probes costs
//! a few reads.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use dprobe_arch::{Insn, NotOptimized};
use dprobe_sym::Mapping;

use crate::code_pages::file_backed;

/// Files opened during one registration, by `(device, inode)`.
#[derive(Default)]
pub(crate) struct Files {
    open: Vec<((u32, u32), u64, Option<File>)>,
}

impl Files {
    /// The file mapped by `m`, if it can be opened as that very file.
    fn of(&mut self, m: &Mapping) -> Option<&File> {
        let key = (m.device, m.inode);
        let i = match self.open.iter().position(|(d, i, _)| (*d, *i) == key) {
            Some(i) => i,
            None => {
                // The mapping itself where the kernel lets this process open it (privileged; the
                // name is stale once the mapping was split); else its path, if it still names
                // the same file (an overlay file system may show another device: not compared).
                let mapped = format!("/proc/self/map_files/{:x}-{:x}", m.start.0, m.end.0);
                let by_path = || {
                    m.path.as_deref().and_then(|p| File::open(p).ok()).filter(|f| {
                        f.metadata().is_ok_and(|md| {
                            let dev = md.dev();
                            (libc::major(dev), libc::minor(dev), md.ino()) == (m.device.0, m.device.1, m.inode)
                        })
                    })
                };
                let file = File::open(mapped).ok().or_else(by_path);
                self.open.push((m.device, m.inode, file));
                self.open.len() - 1
            }
        };
        self.open[i].2.as_ref()
    }
}

/// The longest window: four bytes of its first instructions, then one of 15 bytes.
const MAX_WINDOW: usize = 4 + 15;

/// The most bytes one read of a file takes; windows further apart are read separately.
const READ_BYTES: u64 = 64 << 10;
const GAP_BYTES: u64 = 4 << 10;

/// Compare the original bytes of each window (as analyzed) with the file mapped there: for
/// each window, whether they are the file's, or where not.
pub(crate) fn check_windows(maps: &[Mapping], windows: &[&[Insn]]) -> Vec<Result<(), NotOptimized>> {
    let mut results: Vec<Result<(), NotOptimized>> = vec![Ok(()); windows.len()];
    // (mapping, file offset, window): the windows there is a file to compare with.
    let mut placed: Vec<(usize, u64, usize)> = Vec::with_capacity(windows.len());
    for (i, window) in windows.iter().enumerate() {
        let Some(first) = window.first() else { continue };
        let Some(m) = dprobe_sym::mapping_index(maps, first.addr).filter(|m| file_backed(&maps[*m])) else { continue };
        placed.push((m, first.addr.0 - maps[m].start.0 + maps[m].offset, i));
    }
    placed.sort_unstable_by_key(|&(m, offset, _)| (maps[m].device, maps[m].inode, offset));
    let (mut files, mut buf) = (Files::default(), Vec::new());
    let mut at = 0;
    while at < placed.len() {
        // The windows of one file from `at` on, close together: one read.
        let m = &maps[placed[at].0];
        let start = placed[at].1;
        let mut end = start;
        let mut next = at;
        while let Some(&(n, offset, i)) = placed.get(next) {
            let same = (maps[n].device, maps[n].inode) == (m.device, m.inode);
            let window_end = offset + window_bytes(windows[i]).1 as u64;
            if !same || offset > end + GAP_BYTES || window_end - start > READ_BYTES {
                break;
            }
            end = end.max(window_end);
            next += 1;
        }
        let next = next.max(at + 1);
        buf.resize((end - start) as usize, 0);
        let read = files.of(m).is_some_and(|f| f.read_exact_at(&mut buf, start).is_ok());
        for &(_, offset, i) in &placed[at..next] {
            let (analyzed, len) = window_bytes(windows[i]);
            let from = (offset - start) as usize;
            match buf.get(from..from + len) {
                Some(in_file) if read && in_file != &analyzed[..len] => {
                    let first = windows[i][0].addr;
                    let j = in_file.iter().zip(&analyzed).position(|(a, b)| a != b).unwrap_or(0);
                    let path = m.path.as_deref().unwrap_or_default();
                    results[i] = Err(NotOptimized::CodeChanged {
                        at: first.offset(j as u64),
                        what: format!("its file {path}"),
                        found: analyzed[j..len].to_vec(),
                        expected: in_file[j..].to_vec(),
                    });
                }
                _ => {}
            }
        }
        at = next;
    }
    results
}

/// The original bytes of `window` and how many there are.
fn window_bytes(window: &[Insn]) -> ([u8; MAX_WINDOW], usize) {
    let (mut bytes, mut len) = ([0u8; MAX_WINDOW], 0);
    for insn in window {
        let code = insn.code();
        if len + code.len() > MAX_WINDOW {
            break;
        }
        bytes[len..len + code.len()].copy_from_slice(code);
        len += code.len();
    }
    (bytes, len)
}
