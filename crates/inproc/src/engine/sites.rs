//! What the engine knows of one site's code: the span its jump covers and which sites block
//! each other's jumps, the copy of a jump's window a thread may be in, its `int3` armed or
//! not, and whether the code there is still what dprobe left (or gone, or another tool's).

use super::*;

/// The window and detour of a jumping site, or one about to jump.
pub(super) fn jump_of(site: &SiteState) -> optimizer::Jump<'_> {
    let window = site.window.as_ref().expect("a jumping site has a window");
    (window.as_slice(), site.detour.as_ref().expect("a jumping site has a detour"))
}

/// Where a detour runs its copy of the window of the site `addr`.
///
/// An exit detour's copies are its relocated exit, then the instructions before the exit
/// (`dprobe_arch::exit_detour_code`); a thread stopped at the exit itself goes to the detour's
/// entry, where the exit's handlers run. The map is in the copies' order: the exit first.
pub(super) fn window_copy(addr: Addr, detour: &Detour) -> WindowCopy {
    // No allocation: this runs while the sites are armed, and the C library's allocator may
    // be one of them (each call would trap).
    let mut map = [(addr, detour.window.addr); safepoint::MAX_WINDOW];
    let (first, rest) = match &detour.prefix {
        Some(prefix) => (Some((addr, detour.entry())), &prefix.map[..]),
        None => (None, &detour.window.map[..]),
    };
    let mut len = 0;
    for (slot, pair) in map.iter_mut().zip(first.iter().chain(rest)) {
        *slot = *pair;
        len += 1;
    }
    let end = detour.prefix.as_ref().unwrap_or(&detour.window);
    WindowCopy {
        copy: detour.window.addr,
        end: end.addr.offset(end.code.len() as u64),
        original: addr,
        window: safepoint::Window {
            start: detour.jump_from,
            end: detour.window.original_end,
            map,
            len,
            after_first: detour.window.after_first,
        },
    }
}

/// Where a site's jump starts: the probe, or an exit window's first instruction.
pub(super) fn jump_start(addr: Addr, site: &SiteState) -> Addr {
    site.window.as_ref().ok().and_then(|w| w.first()).map_or(addr, |i| i.addr)
}

/// The bytes `(start, len)` a site's jump takes (the pages under them are held writable while
/// it is there, `code_pages.rs`).
pub(super) fn jump_span(addr: Addr, site: &SiteState) -> (Addr, u64) {
    (jump_start(addr, site), JUMP_LEN as u64)
}

/// The bytes `[start, end)` of the window of the site `addr`, if it has one.
fn span(addr: Addr, site: &SiteState) -> Option<(Addr, Addr)> {
    let w = site.window.as_ref().ok()?;
    Some((w.first().map_or(addr, |i| i.addr), w.last().map_or(addr, Insn::next)))
}

/// Whether a probe at `other` (the site `other_site`) keeps the site `addr` from being a jump:
/// it lies inside the window (its `int3` would be overwritten), or, for an exit window, the
/// window of `other` is an entry window that overlaps it (the two jumps would write over each
/// other; the entry's goes in).
pub(super) fn blocks(addr: Addr, site: &SiteState, other: Addr, other_site: &SiteState) -> bool {
    let Some((start, end)) = span(addr, site).filter(|_| other != addr) else { return false };
    if start <= other && other < end {
        return true;
    }
    let entry = |a: Addr, s: &SiteState| span(a, s).filter(|(from, _)| *from == a);
    start != addr && entry(other, other_site).is_some_and(|(from, to)| from < end && start < to)
}

/// The sites whose window may hold `addr` (entry windows start at their site, before it;
/// exit windows end with it, after it), `addr` itself excluded.
pub(super) fn near(sites: &SiteMap<SiteState>, addr: Addr) -> impl Iterator<Item = (&Addr, &SiteState)> {
    let from = Addr(addr.0.saturating_sub(MAX_WINDOW_BYTES));
    sites.range(from..addr.offset(MAX_WINDOW_BYTES)).filter(move |(a, _)| **a != addr)
}

/// Arm (`armed`) or disarm the `int3` of each site at `addrs` as one batch (every change
/// checked first, see [`code_writes`]), then serialize every thread once, and mark each site
/// that changed. Every patch is tried; the first failure is returned.
pub(super) fn set_armed(sites: &mut SiteMap<SiteState>, addrs: &[Addr], armed: bool) -> Result<(), ProbeError> {
    if addrs.is_empty() {
        return Ok(());
    }
    let change = |a: &Addr| if armed { sites[a].arm } else { sites[a].arm.undo() };
    let changes: Vec<Change> = addrs.iter().map(change).collect();
    let results = code_writes::apply(&changes);
    sys::sync_cores();
    let mut failure = None;
    for (addr, result) in addrs.iter().zip(results) {
        match result {
            Ok(()) => sites.get_mut(addr).expect("a site of the batch").armed = armed,
            // Nothing to disarm where the code is gone (its library unloaded under it), or
            // where dprobe's `int3` is not there any more (the program wrote its own code
            // over it, or another tool took it away): what is there is left as it is.
            Err(_) if !armed && (code_gone(*addr) || !holds(*addr, &[INT3])) => {
                sites.get_mut(addr).expect("a site of the batch").armed = false
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Whether the jump `jump` at `at` has another tool's `int3` on its first byte, its other
/// bytes as dprobe wrote them: a debugger's breakpoint (a kernel uprobe cannot be there: the
/// page under a jump is writable, `code_pages.rs`). The debugger saved the `e9` as the
/// original byte, runs it at each hit, and writes it back when it goes: the original code put
/// back under it now would turn into a jump to nowhere then. So the jump and its detour stay,
/// a pass-through that runs no handler (its page writable, as under any jump), and the
/// original code is put back once the `e9` is ([`Engine::finish_kept_jumps`]).
pub(super) fn behind_a_breakpoint(at: Addr, jump: &[u8]) -> bool {
    let mut now = [0u8; JUMP_LEN];
    sys::read_memory(at, &mut now).is_ok() && now[0] == INT3 && now[1..] == jump[1..JUMP_LEN]
}

/// `object:function+offset` of `addr`, where the symbols read last say.
pub(super) fn symbol_at(st: &State, addr: Addr) -> Option<String> {
    st.symbols
        .as_ref()
        .and_then(|s| s.containing(addr))
        .map(|f| format!("{}:{}+{:#x}", f.object.rsplit('/').next().unwrap_or(&f.object), f.name, addr.0 - f.start.0))
}

/// Whether `site` is a jump kept behind a debugger's breakpoint, with no enabled probe.
pub(super) fn kept_jump(site: &SiteState) -> bool {
    site.kept_behind_breakpoint && site.jumping && !site.probes.iter().any(|p| p.stats.is_enabled())
}

/// Whether the bytes at `at` are `bytes` (unreadable ones are not known to differ).
pub(super) fn holds(at: Addr, bytes: &[u8]) -> bool {
    let mut now = [0u8; 16];
    let now = &mut now[..bytes.len()];
    sys::read_memory(at, now).is_err() || now == bytes
}

/// Whether the code at `addr` is gone: nothing is mapped there any more. (Decided from the maps,
/// not from a failed read: code the program made unreadable still holds dprobe's `int3`.)
pub(super) fn code_gone(addr: Addr) -> bool {
    read_maps().is_ok_and(|maps| dprobe_sym::mapping_index(&maps, addr).is_none())
}

/// Whether the code at `addr` is as `site` (left without probes) left it: its instruction and
/// the instructions of its jump's window, with its `int3` if the site is still armed (a write
/// that could not be made). Not so when the code was mapped again since (a library unloaded
/// under a probe and loaded again at the same place, or a file rewritten in place): what the
/// site knows of it is not true any more. (A site still jumping is taken as it is: the bytes
/// under a jump are not the original ones.)
pub(super) fn holds_what_it_left(site: &SiteState, addr: Addr) -> bool {
    if site.jumping {
        return true;
    }
    let window = site.window.as_deref().unwrap_or_default();
    std::iter::once(&site.insn).chain(window.iter().filter(|i| i.addr != addr)).all(|insn| {
        let mut now = [0u8; 16];
        let now = &mut now[..insn.len];
        if sys::read_memory(insn.addr, now).is_err() {
            return false;
        }
        if insn.addr == addr && site.armed {
            // An armed site's first byte is its `int3`.
            if now[0] != INT3 {
                return false;
            }
            now[0] = insn.code()[0];
        }
        now == insn.code()
    })
}

/// Forget the site at `addr`, left without probes, whose code changed or is gone: its detours wait to be
/// shown free of threads before their memory is reused, as any retired detour; its slots and
/// last published row stay where they are (a thread cannot come into them any more: nothing
/// leads there; one still inside finishes as before).
pub(super) fn forget_site(st: &mut State, addr: Addr) {
    let Some(site) = st.sites.remove(&addr) else { return };
    debug_assert!(site.probes.is_empty() && !site.jumping, "a site left without probes, not jumping");
    if let Some(retired) = st.retired.remove(&addr) {
        st.orphans.push(*retired.detour);
    }
    st.orphans.extend(site.detour.into_iter().chain(site.spare).map(|d| *d));
    std::mem::forget(site.published);
}
