//! The pages under live jumps are kept writable (`rwx`) while a jump is in them, and get their
//! protection back when the last jump there goes.
//!
//! # Why
//!
//! Another tool's kernel uprobe (`perf probe`, `bpftrace`, `uprobe_events`, dprobe's own kernel
//! engine) on an instruction under a jump would break it. The kernel writes its `int3` over the
//! jump's first byte (it only checks that the byte is not an `int3` already); on a hit it runs
//! the file's original instruction out of line and resumes after it, inside the jump's
//! displacement. When the uprobe is removed it writes the file's first byte back over whatever
//! is there, leaving the original opcode followed by the displacement. Either way the program
//! crashes.
//!
//! The kernel places uprobes only in mappings of a file that it sees as plain code: its
//! `valid_vma` refuses a mapping with `VM_WRITE` when a uprobe is registered, and again when a
//! mapping appears or changes (`uprobe_mmap`, which a later `mprotect` back to `r-x` runs).
//! Registration takes the address space's lock for writing, as `mprotect` does: once the page
//! is writable no uprobe registered later goes there. A uprobe registered before is seen when
//! the bytes are checked, after the page became writable (`file_code.rs`; a batch makes the
//! pages of its jumps to come writable before it arms its sites, `engine.rs`), and the site
//! then stays on `int3`. Removing a uprobe ignores `VM_WRITE`, but writes only where it finds
//! an `int3`, never over the jump's `e9`.
//!
//! While a page is writable a read-only alias of its file page is mapped elsewhere
//! (`page_alias.rs`): a uprobe registered meanwhile goes there, with its instruction read from
//! the file, so that an `int3` of dprobe sharing the writable page is safe under it. A page
//! that cannot have its alias is not made writable (its jumps stay on `int3`, with the reason).
//!
//! Only file-backed code is concerned (uprobes live in files): anonymous code (a JIT's) and
//! code already writable are left as they are. A system that refuses writable code (a security
//! policy: SELinux `execmod`, `PR_SET_MDWE`, a seccomp filter) keeps the probe on `int3`, with
//! the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use dprobe_arch::Addr;
use dprobe_sym::Mapping;

use crate::{file_page, page_alias, sys};

const PAGE: u64 = 4096;

/// The pages dprobe made writable and holds so (with their alias), in address order: where
/// its code writes can be plain stores (`code_writes.rs`). A copy of what [`CodePages`] knows,
/// kept where the patching steps, which do not see it, can ask.
static HELD_WRITABLE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The pages dprobe holds writable now (see [`HELD_WRITABLE`]), locked: the guard is held
/// across the writes that rely on it.
pub(crate) fn held_writable() -> MutexGuard<'static, Vec<u64>> {
    HELD_WRITABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Taken by the unit tests that change or rely on [`HELD_WRITABLE`], which is the process's.
#[cfg(test)]
pub(crate) static HELD_BY_TESTS: Mutex<()> = Mutex::new(());

/// Say that dprobe holds `pages` writable (for tests of the code writes).
#[cfg(test)]
pub(crate) fn hold_for_test(pages: &[u64]) {
    let mut held = held_writable();
    held.clear();
    held.extend(pages);
    held.sort_unstable();
}

/// Whether `addr` is in one of the `pages` of [`held_writable`].
pub(crate) fn in_held_page(pages: &[u64], addr: Addr) -> bool {
    pages.binary_search(&(addr.0 / PAGE * PAGE)).is_ok()
}

/// How dprobe changed the pages under jumps.
#[derive(Default)]
pub(crate) struct CodePages {
    /// By page address. Kept when no jump is left, so that the protection to give back is
    /// known even when this call's copy of the maps shows the page as dprobe left it.
    pages: BTreeMap<u64, Page>,
}

struct Page {
    /// Live jumps whose bytes are in the page.
    jumps: u32,
    /// The protection to give back when none is left (`None`: dprobe does not change it).
    restore: Option<libc::c_int>,
    /// The inode of the file mapped there when `restore` was decided.
    inode: u64,
    /// The read-only alias of its file page while dprobe holds it writable (`page_alias.rs`).
    alias: Option<Addr>,
}

/// The files of a batch's pages opened for their aliases, by device and inode, or why one
/// could not be.
type OpenedFiles = Vec<((u32, u32), u64, Result<std::fs::File, String>)>;

/// The pages holding `[addr, addr + len)`.
fn pages_of(addr: Addr, len: u64) -> impl Iterator<Item = u64> {
    (addr.0 / PAGE * PAGE..addr.0 + len).step_by(PAGE as usize)
}

/// Whether code in `m` can carry a kernel uprobe: a file's mapping.
pub(crate) fn file_backed(m: &Mapping) -> bool {
    m.inode != 0 && m.path.as_deref().is_some_and(|p| p.starts_with('/'))
}

impl CodePages {
    /// Count one jump more in the pages holding each span `(addr, len)`, making writable
    /// first those that need it (contiguous pages in one `mprotect`). For each span: done, or
    /// why its pages could not be made writable (then nothing is counted for it).
    pub(crate) fn acquire_all(&mut self, maps: &[Mapping], spans: &[(Addr, u64)]) -> Vec<Result<(), String>> {
        // The pages no jump holds yet, with the protection each gets back.
        let mut fresh: BTreeMap<u64, (Option<libc::c_int>, u64)> = BTreeMap::new();
        let mut mapping_of: BTreeMap<u64, &Mapping> = BTreeMap::new();
        for &(addr, len) in spans {
            for page in pages_of(addr, len) {
                if self.pages.get(&page).is_some_and(|p| p.jumps > 0) {
                    continue;
                }
                let m = dprobe_sym::mapping_index(maps, Addr(page)).map(|i| &maps[i]);
                let inode = m.map_or(0, |m| m.inode);
                let restore = match self.pages.get(&page) {
                    // Given back before: this copy of the maps may show it as dprobe left it.
                    Some(p) if p.inode == inode => p.restore,
                    // Never a shared mapping: a write there would change the file.
                    _ => m.filter(|m| file_backed(m) && !m.write && !m.shared).map(|m| {
                        (if m.read { libc::PROT_READ } else { 0 }) | (if m.exec { libc::PROT_EXEC } else { 0 })
                    }),
                };
                fresh.insert(page, (restore, inode));
                if let Some(m) = m {
                    mapping_of.insert(page, m);
                }
            }
        }
        let writable = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let changing: Vec<u64> = fresh.iter().filter(|(_, (r, _))| r.is_some()).map(|(p, _)| *p).collect();
        let mut refused: BTreeMap<u64, String> = BTreeMap::new();
        // Each page's alias first: from the moment it is writable, a uprobe registered on it
        // goes into the alias (see `page_alias.rs`).
        let mut aliases: BTreeMap<u64, Addr> = BTreeMap::new();
        // Each file opened once for all its pages (a batch may touch hundreds of a library's).
        let mut files: OpenedFiles = Vec::new();
        for &page in &changing {
            let alias = mapping_of.get(&page).ok_or_else(|| "not mapped".to_owned()).and_then(|m| {
                let i = match files.iter().position(|(d, i, _)| (*d, *i) == (m.device, m.inode)) {
                    Some(i) => i,
                    None => {
                        files.push((m.device, m.inode, page_alias::open(m)));
                        files.len() - 1
                    }
                };
                files[i].2.as_ref().map_err(Clone::clone).and_then(|file| page_alias::map(file, m, page))
            });
            match alias {
                Ok(alias) => {
                    aliases.insert(page, alias);
                }
                Err(e) => {
                    refused.insert(page, format!("no read-only alias of its file page (for kernel uprobes): {e}"));
                }
            }
        }
        let protecting: Vec<u64> = changing.iter().copied().filter(|p| !refused.contains_key(p)).collect();
        if !protecting.is_empty() {
            file_page::made_writable();
        }
        for (start, count) in runs(&protecting) {
            if let Err(e) = sys::protect(Addr(start), count * PAGE, writable) {
                for page in (start..start + count * PAGE).step_by(PAGE as usize) {
                    refused.insert(page, format!("mprotect to rwx: {e}"));
                    page_alias::unmap(aliases.remove(&page).expect("an alias"));
                }
            }
        }
        let mut out = Vec::with_capacity(spans.len());
        for &(addr, len) in spans {
            if let Some(why) = pages_of(addr, len).find_map(|p| refused.get(&p)) {
                out.push(Err(why.clone()));
                continue;
            }
            for page in pages_of(addr, len) {
                let (restore, inode) = fresh.get(&page).copied().unwrap_or((None, 0));
                let p = self.pages.entry(page).or_insert(Page { jumps: 0, restore, inode, alias: None });
                p.jumps += 1;
                if let Some(alias) = aliases.remove(&page) {
                    // A page whose protection could not be given back kept its old alias.
                    if let Some(old) = p.alias.replace(alias) {
                        page_alias::unmap(old);
                    }
                }
            }
            out.push(Ok(()));
        }
        // Pages made writable for spans refused because of another of their pages.
        let unused: BTreeSet<u64> = fresh
            .iter()
            .filter(|(p, (r, _))| r.is_some() && !refused.contains_key(p))
            .filter(|(p, _)| self.pages.get(p).is_none_or(|q| q.jumps == 0))
            .map(|(p, _)| *p)
            .collect();
        for page in &unused {
            let (restore, inode) = fresh[page];
            let before = self.pages.insert(*page, Page { jumps: 0, restore, inode, alias: aliases.remove(page) });
            if let Some(old) = before.and_then(|p| p.alias) {
                page_alias::unmap(old);
            }
        }
        debug_assert!(aliases.is_empty(), "every alias belongs to a page held or given back");
        self.give_back(&unused);
        if !changing.is_empty() {
            self.publish();
        }
        out
    }

    /// Say which pages dprobe holds writable now (see [`HELD_WRITABLE`]).
    fn publish(&self) {
        let held = self.pages.iter().filter(|(_, p)| p.alias.is_some()).map(|(page, _)| *page);
        let mut published = held_writable();
        published.clear();
        published.extend(held);
    }

    /// Count one jump less in the pages holding each span; those left without a jump get their
    /// protection back.
    pub(crate) fn release_all(&mut self, spans: &[(Addr, u64)]) {
        let mut emptied = BTreeSet::new();
        for &(addr, len) in spans {
            for page in pages_of(addr, len) {
                if let Some(p) = self.pages.get_mut(&page).filter(|p| p.jumps > 0) {
                    p.jumps -= 1;
                    if p.jumps == 0 {
                        emptied.insert(page);
                    }
                }
            }
        }
        if !emptied.is_empty() {
            self.give_back(&emptied);
            self.publish();
        }
    }

    /// Give `pages` (held by no jump) their protection back, then unmap their aliases: the
    /// file's own mapping put back where the pages and the code around them hold the file's
    /// bytes again (`file_page.rs`), else contiguous pages of the same protection in one
    /// `mprotect`. A refusal leaves a page writable, with its alias, which harms nothing: the
    /// next jump there finds it so.
    fn give_back(&mut self, pages: &BTreeSet<u64>) {
        // Only pages dprobe made writable (those with an alias).
        let returning: Vec<file_page::Returning> = pages
            .iter()
            .filter_map(|page| {
                self.pages.get(page).filter(|p| p.alias.is_some()).and_then(|p| Some((*page, p.restore?)))
            })
            .collect();
        let put_back = file_page::put_back(&returning);
        // A page whose file is not mapped there any more (its library unloaded while a jump
        // was in it) has nothing to protect: whatever is mapped there now is someone else's.
        // (Read only if some page is left for `mprotect`.)
        let mut maps = None;
        let mut gone = |page: u64, p: &Page| {
            let maps = maps.get_or_insert_with(|| dprobe_sym::read_maps().unwrap_or_default());
            !maps.is_empty() && dprobe_sym::mapping_index(maps, Addr(page)).is_none_or(|i| maps[i].inode != p.inode)
        };
        let mut by_prot: BTreeMap<libc::c_int, Vec<u64>> = BTreeMap::new();
        for page in pages {
            let Some(p) = self.pages.get_mut(page) else { continue };
            let Some(prot) = p.restore else { continue };
            if put_back.contains(page) || gone(*page, p) {
                if let Some(alias) = p.alias.take() {
                    page_alias::unmap(alias);
                }
                continue;
            }
            by_prot.entry(prot).or_default().push(*page);
        }
        for (prot, pages) in by_prot {
            for (start, count) in runs(&pages) {
                let given_back = |start: u64, count: u64| sys::protect(Addr(start), count * PAGE, prot).is_ok();
                let pages = (start..start + count * PAGE).step_by(PAGE as usize);
                // A call that failed may have changed part of the run: then page by page, so
                // that each page is known to be given back or still writable.
                let back: Vec<u64> = if given_back(start, count) {
                    pages.collect()
                } else {
                    pages.filter(|page| given_back(*page, 1)).collect()
                };
                for page in back {
                    if let Some(alias) = self.pages.get_mut(&page).and_then(|p| p.alias.take()) {
                        page_alias::unmap(alias);
                    }
                }
            }
        }
    }

    /// Live jumps counted in the page holding `addr` (for tests of the bookkeeping).
    #[cfg(test)]
    fn jumps_in(&self, addr: u64) -> u32 {
        self.pages.get(&(addr / PAGE * PAGE)).map_or(0, |p| p.jumps)
    }
}

/// Sorted page addresses as runs of contiguous pages `(start, count)`.
fn runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &page in pages {
        match out.last_mut() {
            Some((start, count)) if *start + *count * PAGE == page => *count += 1,
            _ => out.push((page, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_pages_make_one_run() {
        assert_eq!(runs(&[0x1000, 0x2000, 0x4000, 0x5000, 0x6000, 0x9000]), [(0x1000, 2), (0x4000, 3), (0x9000, 1)]);
        assert_eq!(runs(&[]), []);
    }

    #[test]
    fn a_jump_across_a_page_boundary_holds_both_pages() {
        assert_eq!(pages_of(Addr(0x1ffe), 5).collect::<Vec<_>>(), [0x1000, 0x2000]);
        assert_eq!(pages_of(Addr(0x1ffb), 5).collect::<Vec<_>>(), [0x1000]);
    }

    #[test]
    fn anonymous_code_is_counted_but_never_protected() {
        // No mapping of a file there: the counts move, no `mprotect` is made (the address is
        // not even mapped: a system call on it would fail and refuse the span).
        let _held = HELD_BY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut pages = CodePages::default();
        let spans = [(Addr(0x10_0000), 5), (Addr(0x10_0010), 5)];
        assert_eq!(pages.acquire_all(&[], &spans), [Ok(()), Ok(())]);
        assert_eq!(pages.jumps_in(0x10_0000), 2);
        pages.release_all(&spans[..1]);
        assert_eq!(pages.jumps_in(0x10_0000), 1);
        pages.release_all(&spans[1..]);
        pages.release_all(&spans[1..]);
        assert_eq!(pages.jumps_in(0x10_0000), 0);
    }
}
