//! The address → site map read by the trap handler.

use std::sync::Arc;

use dprobe_rcu::Rcu;

use crate::Site;

/// Why an address is in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The probed address itself: its `int3` trapped.
    Entry,
    /// The `int3` at the end of the site's out-of-line slot: the instruction has run and the
    /// post-handlers are due.
    PostStep,
}

/// One row of the table.
pub struct TableEntry<A> {
    /// The trapping address (of the `int3`).
    pub key: u64,
    /// What a trap there means.
    pub kind: TrapKind,
    /// The site.
    pub site: Arc<Site<A>>,
}

impl<A> Clone for TableEntry<A> {
    fn clone(&self) -> Self {
        TableEntry { key: self.key, kind: self.kind, site: self.site.clone() }
    }
}

/// Sorted rows behind an [`Rcu`]: lookups are a binary search on an immutable snapshot,
/// lock-free and async-signal-safe; changes publish a new snapshot and wait for readers of the
/// old one (so once a change returns, no reader can still see what it removed).
pub struct SiteTable<A> {
    rows: Rcu<Vec<TableEntry<A>>>,
}

impl<A> Default for SiteTable<A> {
    fn default() -> Self {
        SiteTable { rows: Rcu::new(Vec::new()) }
    }
}

impl<A> SiteTable<A> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `f` on the site trapping at `key`, if any. Async-signal-safe; the site stays valid
    /// (and no change to the table completes) until `f` returns.
    pub fn lookup<R>(&self, key: u64, f: impl FnOnce(Option<(&Site<A>, TrapKind)>) -> R) -> R {
        self.rows.read(|rows| match rows.binary_search_by_key(&key, |r| r.key) {
            Ok(i) => f(Some((&rows[i].site, rows[i].kind))),
            Err(_) => f(None),
        })
    }

    /// In a child process just forked: see [`Rcu::forget_readers_after_fork`].
    pub fn forget_readers_after_fork(&self) {
        self.rows.forget_readers_after_fork();
    }

    /// Change the rows: `f` edits a copy, which is sorted and published. Returns after the
    /// grace period, with the old rows (drop them outside any handler).
    ///
    /// Not async-signal-safe: allocates and may sleep.
    pub fn change(&self, f: impl FnOnce(&mut Vec<TableEntry<A>>)) -> Vec<TableEntry<A>> {
        self.rows.update(|rows| {
            let mut next = rows.clone();
            f(&mut next);
            next.sort_by_key(|r| r.key);
            next
        })
    }

    /// A copy of the current rows (for listings).
    pub fn rows(&self) -> Vec<TableEntry<A>> {
        self.rows.read(|rows| rows.clone())
    }

    /// Wait until every lookup that started before this call has finished.
    pub fn synchronize(&self) {
        self.rows.synchronize();
    }
}
