//! A read-only second mapping of a code page's file page, kept while dprobe holds the code
//! page writable (`code_pages.rs`), so that another tool's kernel uprobe registered meanwhile
//! on an offset of that page still goes into some mapping of the file.
//!
//! # Why
//!
//! The kernel places a uprobe only in mappings it sees as plain code (`valid_vma` refuses
//! `VM_WRITE`), and reads the probed instruction from the file when it places it in the
//! first one (`prepare_uprobe`, which sets `UPROBE_COPY_INSN`). But once the process has a
//! uprobe anywhere (`MMF_HAS_UPROBES`), every `int3` it executes is looked up by file and
//! offset (`handle_swbp`), in whatever mapping, writable or not. An `int3` of dprobe in a
//! page made writable for a jump (a return probe's one-byte `ret` exit next to its entry's
//! jump) under a uprobe placed in no mapping at all (the file mapped nowhere else): the
//! uprobe is found, its instruction was never read, and the thread is sent back to the
//! `int3` again and again for as long as the uprobe is registered (it spins in the kernel);
//! removing the uprobe writes the instruction it never read, a zero byte, over the `int3`
//! (removal walks writable mappings too, and writes wherever it finds an `int3`): the
//! program then crashes.
//!
//! With this alias (`r--`, private: not writable, so `valid_vma` accepts it) the uprobe goes
//! into the alias and its instruction is read from the file. Then in the writable page the
//! kernel takes the hits of dprobe's `int3` at that offset and runs the file's instruction
//! (as it does in a page left `r-x`), and its removal writes the file's byte back over the
//! `int3`, which `rearm.rs` puts right. A jump at that offset is left alone: the kernel writes
//! no `int3` into a writable mapping, and on removal writes only over an `int3`. Nothing ever
//! runs in the alias; its page is the file's, shared with the page cache until a uprobe
//! writes its `int3` there.

use dprobe_arch::Addr;
use dprobe_sym::Mapping;

use crate::sys;

const PAGE: u64 = 4096;

/// The file mapped by `m`, opened to map aliases of its pages with [`map`], or why it cannot
/// be (it is not the one mapped there any more, or cannot be opened).
pub(crate) fn open(m: &Mapping) -> Result<std::fs::File, String> {
    use std::os::unix::fs::MetadataExt;
    let path = m.path.as_deref().ok_or("no file")?;
    let file = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    let device = (libc::major(meta.dev()), libc::minor(meta.dev()));
    if (device, meta.ino()) != (m.device, m.inode) {
        return Err(format!("{path} is not the file mapped at {} any more", m.start));
    }
    Ok(file)
}

/// Map the file page of `m` (whose file is `file`, from [`open`]) under the code page at
/// `page`, read-only, anywhere: where it is, or why it cannot be.
pub(crate) fn map(file: &std::fs::File, m: &Mapping, page: u64) -> Result<Addr, String> {
    use std::os::fd::AsRawFd;
    let offset = m.offset + (page - m.start.0);
    // SAFETY: a new private read-only mapping of one page of an open file, at an address the
    // kernel chooses: no existing memory is affected.
    let r = unsafe {
        sys::raw_syscall6(
            libc::SYS_mmap,
            [0, PAGE, libc::PROT_READ as u64, libc::MAP_PRIVATE as u64, file.as_raw_fd() as u64, offset],
        )
    };
    if r < 0 {
        let path = m.path.as_deref().unwrap_or_default();
        return Err(format!("mapping {path} at {offset:#x}: {}", std::io::Error::from_raw_os_error(-r as i32)));
    }
    Ok(Addr(r as u64))
}

/// Unmap an alias [`map`] made.
pub(crate) fn unmap(alias: Addr) {
    // SAFETY: `alias` is a page `map` mapped, which nothing but the kernel's uprobes uses.
    unsafe { sys::raw_syscall6(libc::SYS_munmap, [alias.0, PAGE, 0, 0, 0, 0]) };
}
