//! The agent's own probes placed as a session starts, before any of dprobe's: those that keep
//! a lent thread's ids right (`dprobe_inproc::watch_lent_threads`), those that keep the
//! agent's thread alike a caller changing its ids (`credentials.rs`), and those that let a
//! caller enter a user namespace alone (`user_namespace.rs`).
//!
//! One batch for all of them: each batch is a round of code changes (the process's maps read,
//! the sites' windows checked, serializing every thread after each step of the jumps, a
//! safepoint), paid in every program a followed `exec` starts. Where the batch is refused (a
//! function the C library lacks), each group is placed on its own, as far as it goes.

use std::sync::Arc;

use dprobe_inproc::{register_all, Kprobe, LentThreads, Probe};

use crate::credentials::KeptAlike;
use crate::shm::Shm;
use crate::user_namespace::LeavesForUserNamespaces;

/// Place them: the lent threads' only where `lent` (no thread of the program blocks
/// `SIGTRAP`). Each is `None` where its group could not be placed.
pub(crate) fn place(
    shm: &Arc<Shm>,
    lent: bool,
) -> (Option<LentThreads>, Option<KeptAlike>, Option<LeavesForUserNamespaces>) {
    let lenders = if lent { dprobe_inproc::lent_thread_probes() } else { Vec::new() };
    let credentials = crate::credentials::probes(shm);
    let namespaces = crate::user_namespace::probes();
    let sizes = [lenders.len(), credentials.as_ref().map_or(0, Vec::len), namespaces.len()];
    let has_credentials = credentials.is_some();
    let asked: Vec<Kprobe> = lenders.into_iter().chain(credentials.into_iter().flatten()).chain(namespaces).collect();
    let Ok(placed) = register_all(asked) else {
        return (
            lent.then(dprobe_inproc::watch_lent_threads),
            crate::credentials::keep_alike(shm),
            crate::user_namespace::watch(),
        );
    };
    let mut placed = placed.into_iter();
    let mut group = |n: usize| placed.by_ref().take(n).collect::<Vec<Probe>>();
    let (lenders, credentials, namespaces) = (group(sizes[0]), group(sizes[1]), group(sizes[2]));
    (
        lent.then(|| LentThreads::of(lenders)),
        has_credentials.then(|| KeptAlike::of(credentials)),
        Some(LeavesForUserNamespaces::of(namespaces)),
    )
}
