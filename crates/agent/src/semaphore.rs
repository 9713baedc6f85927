//! Static probes' semaphores (USDT), raised by the agent in its own process: each placing of
//! a probe that has one adds 1 to its counter, each removal takes that 1 away again, whoever
//! else counts on it (another tracer, the kernel's reference counter). Because the agent does
//! it where it places and removes probes, the counter follows the probe everywhere: a library
//! loaded later (raised when the probe is placed there, lowered before `dlclose` unmaps it),
//! a forked child (it inherits the raised counter with the probes, and lowers it when its own
//! probes go, at once when children are not followed), the end of the trace however it comes.

use std::sync::atomic::{AtomicU16, Ordering::*};

use dprobe_sym::{load_bias_of, read_maps, Semaphore};

/// Raise `semaphore` where its object is mapped in this process: the counter's address, or
/// why it could not be raised. Only a counter inside a writable mapping of its own object is
/// written: a wrong address must never become a fault in the program.
pub(crate) fn raise(semaphore: &Semaphore) -> Result<u64, String> {
    let maps = read_maps().map_err(|e| format!("cannot read this process's maps: {e}"))?;
    let bias = load_bias_of(&maps, &semaphore.object)
        .ok_or_else(|| format!("`{}` is not mapped in process {}", semaphore.object, std::process::id()))?;
    let addr = semaphore.addr.wrapping_add(bias);
    let inside = maps.iter().any(|m| {
        m.write
            && m.path.as_deref() == Some(semaphore.object.as_str())
            && m.start.0 <= addr
            && addr.checked_add(2).is_some_and(|end| end <= m.end.0)
    });
    if !inside || addr % 2 != 0 {
        return Err(format!("the semaphore at {addr:#x} is not in a writable mapping of `{}`", semaphore.object));
    }
    add(addr, 1);
    Ok(addr)
}

/// Take back what [`raise`] added at `addr` (returned by it; the mapping is still there).
pub(crate) fn lower(addr: u64) {
    add(addr, -1);
}

/// Add `delta` to the counter at `addr`, never past 0 or 0xffff.
fn add(addr: u64, delta: i32) {
    // SAFETY: `addr` is 2-aligned, inside a writable mapping of the semaphore's object (checked
    // by `raise`, which returned it, and the object is not unmapped while a probe of it is
    // placed); the program reads it as an `unsigned short`, so an atomic of that size is a
    // correct view of it.
    let counter = unsafe { AtomicU16::from_ptr(addr as *mut u16) };
    let _ = counter
        .fetch_update(AcqRel, Acquire, |now| Some((i32::from(now) + delta).clamp(0, i32::from(u16::MAX)) as u16));
}
