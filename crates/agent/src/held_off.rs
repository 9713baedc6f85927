//! Probes that stay on `int3`, held off while the tracer places the others.
//!
//! The agent's own thread places the probes, and places them with the C library: reading
//! `/proc/self/maps`, allocating, copying. A probe there that stays on `int3` (the C library's
//! `memmove`, which `memcpy` is, cannot take a jump: a neighbouring function branches into its
//! first bytes) makes each such call of the agent's a trap, about 2 µs, skipped by the handler
//! as the agent's own: with `libc:*`, thousands of traps per probe placed after it, seconds in
//! all (2,200 probes took 24 s; the same probes 3.5 min to trace with ptrace). So an entry
//! probe that stays on `int3` is disabled as soon as it is placed, and enabled again when the
//! tracer says every probe is placed ([`crate::wire::Message::Arm`]), or sends anything else
//! first. A started program waits for its probes meanwhile; a running one (`-p`) sees such a
//! probe's hits from the end of the placing, not from its own placing.

use crate::inside::Placed;

/// Hold off `placed`'s probe if it is an entry probe on `int3`: its index, to enable it by
/// [`arm`]. Not a static probe whose semaphore it raised: the program prepares the probe's
/// arguments from then on, and may take the semaphore as the sign that the probe is there.
pub(crate) fn hold_off(placed: &Placed) -> Option<usize> {
    let Placed::Entry { probe, index, semaphore: None, .. } = placed else { return None };
    (probe.optimized().is_err() && probe.disable().is_ok()).then_some(*index)
}

/// Enable the probes held off (`held`, emptied), in `placed`.
pub(crate) fn arm(held: &mut Vec<usize>, placed: &[Placed]) {
    for index in held.drain(..) {
        let probe = placed.iter().find_map(|p| match p {
            Placed::Entry { probe, index: i, .. } if *i == index => Some(probe),
            _ => None,
        });
        if let Some(probe) = probe {
            // A probe that cannot be enabled again (its code changed meanwhile) stays off, as a
            // probe whose placing failed; its figures say so (no hits).
            let _ = probe.enable();
        }
    }
}
