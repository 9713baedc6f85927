//! Where a probe goes: its target resolved (a symbol, an offset, an address) in the files the
//! process has mapped, its function's code read (in runs, for a batch) and decoded, its
//! instruction analyzed, and the places dprobe refuses (its own hit path, code it patched).

use super::sites::{forget_site, holds_what_it_left};
use super::*;

/// Where a probe goes, and for a new site its instruction and whether a jump can replace it
/// (`None` for a site analyzed before).
pub(super) type Located = (Target, Option<(Insn, Result<Vec<Insn>, NotOptimized>, VectorState)>);

/// The functions read and decoded for one batch, by `(start, size)`: the probes of one
/// function share its code and the decoding of its branches.
#[derive(Default)]
pub(super) struct FunctionCache {
    decoded: std::collections::HashMap<(Addr, u64), FunctionCode>,
    /// Code read ahead for the batch ([`FunctionCache::read_ahead`]), not decoded yet.
    read_ahead: std::collections::HashMap<(Addr, u64), Vec<u8>>,
}

impl FunctionCache {
    /// Read the code of the functions of `targets` not analyzed before, for the batch to find
    /// (one system call for every [`sys::MAX_RANGES`] functions, not one each). A function
    /// whose code cannot be read is left out: it is read again alone, where its error is made.
    pub(super) fn read_ahead(&mut self, st: &State, targets: &[Result<Target, ProbeError>]) {
        let mut wanted: Vec<(Addr, u64)> = targets
            .iter()
            .filter_map(|t| t.as_ref().ok())
            .filter(|t| st.sites.get(&t.addr).is_none())
            .map(|t| (t.function.start, t.function.size))
            .filter(|key| !self.decoded.contains_key(key))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut buffers: Vec<Vec<u8>> = wanted.iter().map(|&(_, size)| vec![0u8; size as usize]).collect();
        let read = read_in_runs(wanted.len(), sys::MAX_RANGES, |run| {
            let ranges: Vec<(Addr, usize)> =
                wanted[run.clone()].iter().map(|&(at, size)| (at, size as usize)).collect();
            let mut all = vec![0u8; ranges.iter().map(|r| r.1).sum()];
            let mut left = sys::read_ranges(&ranges, &mut all);
            // The functions read whole, into their own buffers.
            let (mut at, mut whole) = (0, 0);
            for (buffer, &(_, len)) in buffers[run].iter_mut().zip(&ranges) {
                if len > left {
                    break;
                }
                buffer.copy_from_slice(&all[at..at + len]);
                (at, left, whole) = (at + len, left - len, whole + 1);
            }
            whole
        });
        for ((key, code), _) in wanted.into_iter().zip(buffers).zip(read).filter(|(_, ok)| *ok) {
            self.read_ahead.insert(key, code);
        }
    }
}

/// Read `count` pieces in runs of at most `run` with `read`, which reads the pieces of a range
/// in order and says how many it read whole (it stops at the first it cannot read): which
/// pieces were read. A piece that could not be is skipped, and the next run starts after it.
fn read_in_runs(count: usize, run: usize, mut read: impl FnMut(std::ops::Range<usize>) -> usize) -> Vec<bool> {
    let mut done = vec![false; count];
    let mut from = 0;
    while from < count {
        let to = (from + run).min(count);
        let whole = read(from..to).min(to - from);
        done[from..from + whole].fill(true);
        from = if from + whole == to { to } else { from + whole + 1 };
    }
    done
}

/// Resolve a probe, analyze its instruction and decide whether a jump can replace it.
pub(super) fn locate(
    st: &mut State,
    maps: &[Mapping],
    probe: &Kprobe,
    functions: &mut FunctionCache,
) -> Result<Located, ProbeError> {
    let target = resolve(st, maps, probe)?;
    locate_target(st, maps, target, functions)
}

/// [`locate`], for a probe resolved to `target`.
pub(super) fn locate_target(
    st: &mut State,
    maps: &[Mapping],
    target: Target,
    functions: &mut FunctionCache,
) -> Result<Located, ProbeError> {
    let (addr, f) = (target.addr, &target.function);
    refuse_own_code(st, addr)?;
    if let Some(region) = hit_path_region(&f.name) {
        return Err(ProbeError::Blacklisted { addr, region });
    }
    if let Some(site) = st.sites.get(&addr) {
        // Analyzed when it was first probed, and kept since, unless it is left without probes
        // and the code there is now another file's (or another part of one), or not the bytes
        // it left: a library unloaded and another (or the same, rewritten) mapped where it was.
        // Everything the site knew (its instruction, slots and detour) is of the code that
        // went, which the new code would run.
        if !site.probes.is_empty() || (site.origin == origin_of(maps, addr) && holds_what_it_left(site, addr)) {
            return Ok((target, None));
        }
        forget_site(st, addr);
    }
    let function = match functions.decoded.entry((f.start, f.size)) {
        std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
        std::collections::hash_map::Entry::Vacant(new) => {
            let invalid = |reason: String| ProbeError::InvalidAddress { addr, reason };
            let mut code = match functions.read_ahead.remove(&(f.start, f.size)) {
                Some(code) => code,
                None => {
                    let mut code = vec![0u8; f.size as usize];
                    sys::read_memory(f.start, &mut code)
                        .map_err(|e| invalid(format!("cannot read the function's code: {e}")))?;
                    code
                }
            };
            // Analyze the original bytes, never an armed probe's int3.
            revert_own_patches(st, f.start, &mut code);
            new.insert(FunctionCode::decode(code, f.start))
        }
    };
    let code = function.code();
    // An `int3` dprobe did not write: another tool's (a kernel uprobe, a debugger) or the
    // program's own. Taking it for the original byte would write an `int3` back when the
    // probe goes, after its owner took it away: a stray trap later.
    if code.get(addr.0.wrapping_sub(f.start.0) as usize) == Some(&INT3) {
        return Err(ProbeError::ForeignBreakpoint { addr });
    }
    let insn = analyze(code, f.start, addr)?;
    // A `ret` or a jump has no room for a jump after it: its window ends with it instead.
    let exit = |i: &Insn| {
        matches!(i.class, ExecClass::Emulate { emulation: Emulation::Ret { .. } | Emulation::Jmp { .. }, .. })
    };
    let window = function.can_optimize(addr).or_else(|entry| match exit(&insn) {
        true => function.can_optimize_exit(addr),
        false => Err(entry),
    });
    // Branches from elsewhere in the object (another function's tail jump into this one's
    // middle, a `.cold` part jumping back to the epilogue) are checked only for a window the
    // function's own branches allow: for an entry window its bytes +1..+4, for an exit window
    // every byte after its first.
    let window = window.and_then(|w| {
        let (start, end) = (w[0].addr, w.last().map_or(addr, Insn::next));
        let len = if start == addr { JUMP_LEN as u64 } else { end.0 - start.0 };
        dprobe_sym::check_object_branches_in(f, start, len).map(|()| w)
    });
    let returns = matches!(insn.class, ExecClass::Emulate { emulation: Emulation::Ret { .. }, .. });
    let avx = std::arch::is_x86_feature_detected!("avx");
    let vector = match window.as_ref().map(|w| w[0].addr != addr) {
        // At a `ret`, as at an entry, only values the calling convention passes are live
        // (the return value, in `rax`/`rdx` and `xmm0`/`xmm1`): every vector register is the
        // caller's to save.
        Ok(true) if returns => VectorState::Xmm,
        // A tail call is the callee's entry.
        Ok(_) if tail_calls_a_function(&insn, f, st.symbols.as_ref()) => VectorState::Xmm,
        // A split-off part starts with what its function had live.
        _ if split_off_part(f) && avx => VectorState::Full,
        // Past the entry by instructions on general registers alone, with no branch landing
        // between from anywhere in the object (the agent's probe on `syscall`).
        _ if avx && function.has_entry_state_at(addr) && entered_only_at_its_entry(f, code, addr) => VectorState::Xmm,
        _ => vector_state(addr, f.start, endbr64_len(code) as u64, avx),
    };
    Ok((target, Some((insn, window, vector))))
}

/// Whether no branch from the rest of the object of function `f` (whose code is `code`)
/// lands after its entry's first byte (past an `endbr64`) up to `addr`.
fn entered_only_at_its_entry(f: &Function, code: &[u8], addr: Addr) -> bool {
    let entry = f.start.offset(endbr64_len(code) as u64);
    addr <= entry || dprobe_sym::check_object_branches_in(f, entry.offset(1), addr.0 - entry.0).is_ok()
}

/// Whether `insn`, in function `f`, is a tail call: a `jmp` to another function's first
/// instruction (or to its own, recursing), or to a PLT entry, where only what the calling
/// convention passes is live, as at that function's entry. A jump into a part the compiler or
/// a post-link optimizer split off a function (`f.cold`, BOLT's `f.warm`, LLVM's
/// `f.__part.N`), into another function's middle (a tail the compiler shares between
/// functions), or within `f` may carry any live state and is not one; neither is an address
/// one of whose names is such a part (folded code).
fn tail_calls_a_function(insn: &Insn, f: &Function, symbols: Option<&Symbols>) -> bool {
    let ExecClass::Emulate { emulation: Emulation::Jmp { target }, .. } = insn.class else { return false };
    let Some(symbols) = symbols else { return false };
    if symbols.in_plt(target) {
        return true;
    }
    let (mut named, mut parts) = (false, false);
    for g in symbols.starting_at(target) {
        named = true;
        parts |= split_off_part(g);
    }
    named && !parts && (target == f.start || !f.contains(target))
}

/// Whether `f` is a part the compiler or a post-link optimizer split off a function (`f.cold`,
/// BOLT's `f.warm`, LLVM's `f.__part.N`): its first instruction is not an entry.
fn split_off_part(f: &Function) -> bool {
    [".cold", ".warm", ".__part."].iter().any(|part| f.name.contains(part))
}

/// Put the original bytes back into `code` (read at `start`) where dprobe's sites patched it.
pub(super) fn revert_own_patches(st: &State, start: Addr, code: &mut [u8]) {
    for site in st.sites.range(start..start.offset(code.len() as u64)).map(|(_, s)| s) {
        if site.jumping {
            let window = site.window.as_ref().expect("a jumping site has a window");
            Patch { addr: window[0].addr, old: window_head(window).to_vec(), new: Vec::new() }.revert_in(code, start);
        }
        // An exit's `int3` may lie past the jump's bytes, armed.
        if site.armed {
            arm(&site.insn).revert_in(code, start);
        }
    }
}

/// dprobe's slots and fault guard are never probed.
fn refuse_own_code(st: &State, addr: Addr) -> Result<(), ProbeError> {
    if st.pool.owns(addr) {
        return Err(ProbeError::Blacklisted { addr, region: "dprobe's out-of-line slots".into() });
    }
    if guard::guard_code_contains(addr.0) {
        return Err(ProbeError::Blacklisted { addr, region: "dprobe's handler fault guard".into() });
    }
    if hit_stack::code_contains(addr.0) {
        return Err(ProbeError::Blacklisted { addr, region: "dprobe's switch to its hit stack".into() });
    }
    Ok(())
}

/// Resolve a probe with the symbols read before, or read again when they do not have it (a
/// library may have been loaded since).
pub(super) fn resolve(st: &mut State, maps: &[Mapping], probe: &Kprobe) -> Result<Target, ProbeError> {
    let result = match probe.resolve(st.symbols.get_or_insert_with(|| Symbols::load(maps)), maps) {
        Err(e) if e.may_load_later() || matches!(e, ResolveError::NoFunction { .. }) => {
            probe.resolve(st.symbols.insert(Symbols::load(maps)), maps)
        }
        result => result,
    };
    if let Err(ResolveError::NoFunction { addr }) = result {
        // No symbol covers dprobe's slots: say what they are.
        refuse_own_code(st, addr)?;
    }
    Ok(result?)
}

/// Forget the symbols read before if a file's code is mapped elsewhere since (a library
/// unloaded, loaded again elsewhere, or another loaded where it was: its functions would be
/// found where they are no more). Once per batch, before its probes are resolved.
pub(super) fn drop_moved_symbols(st: &mut State, maps: &[Mapping]) {
    let loaded = loaded_files(maps);
    if loaded != st.symbols_of {
        st.symbols = None;
        st.symbols_of = loaded;
    }
}

/// A file whose code is mapped in the process: its device and inode, and where its offset 0 is.
pub(super) type LoadedFile = ((u32, u32), u64, u64);

/// The files whose code is mapped in `maps`, each with where its offset 0 is, in order: what
/// the symbols read from them depend on (a mapping split or made writable changes nothing
/// here, nor the read-only aliases of `page_alias.rs`).
pub(super) fn loaded_files(maps: &[Mapping]) -> Vec<LoadedFile> {
    let mut files: Vec<LoadedFile> = maps
        .iter()
        .filter(|m| m.inode != 0 && m.exec)
        .map(|m| (m.device, m.inode, m.start.0.wrapping_sub(m.offset)))
        .collect();
    files.sort_unstable();
    files.dedup();
    files
}

/// Whether a function belongs to dprobe's hit path (kprobe rule 2): dprobe's own crates, its
/// assembly, and the C library's signal return trampoline. Functions of other libraries that
/// the hit path calls (e.g. `memcpy`) may be probed: a hit on them from dprobe's own hit path
/// runs no handler and counts nothing (it is not the program's call), and one from a handler's
/// body counts as missed (the trap path decides this before anything that may call them, see
/// `trap::on_sigtrap`).
pub(super) fn hit_path_region(name: &str) -> Option<String> {
    const CRATES: [&str; 4] = ["dprobe_inproc", "dprobe_core", "dprobe_rcu", "dprobe_arch"];
    if name.starts_with("__dprobe_") {
        return Some(format!("dprobe's hit path (`{name}`)"));
    }
    if let Some(c) = CRATES.iter().find(|c| name.contains(*c)) {
        return Some(format!("dprobe's hit path (crate {c}, `{name}`)"));
    }
    if name == "__restore_rt" {
        return Some("the signal return trampoline `__restore_rt`, which every handler returns through".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::read_in_runs;

    /// Reads pieces that `readable` says can be, each run stopping at the first that cannot.
    fn runs_of(count: usize, run: usize, readable: impl Fn(usize) -> bool) -> (Vec<bool>, Vec<std::ops::Range<usize>>) {
        let mut asked = Vec::new();
        let done = read_in_runs(count, run, |range| {
            asked.push(range.clone());
            range.clone().take_while(|&i| readable(i)).count()
        });
        (done, asked)
    }

    #[test]
    fn every_piece_that_can_be_read_is_read_in_runs() {
        let (done, asked) = runs_of(600, 256, |_| true);
        assert!(done.iter().all(|&d| d));
        assert_eq!(asked, [0..256, 256..512, 512..600]);
        // A piece that cannot be read, first, in the middle, last of a run, on a run's edge.
        for bad in [0, 100, 255, 256, 599] {
            let (done, asked) = runs_of(600, 256, |i| i != bad);
            assert!(done.iter().enumerate().all(|(i, &d)| d == (i != bad)), "bad piece {bad}");
            assert!(asked.iter().all(|r| r.len() <= 256 && !r.is_empty()), "{asked:?}");
            assert!(asked.iter().any(|r| r.start == bad + 1) || bad == 255 || bad == 599, "{bad}: {asked:?}");
        }
        // Two in a row, and none at all.
        let (done, _) = runs_of(10, 4, |i| i != 2 && i != 3);
        assert_eq!(done, [true, true, false, false, true, true, true, true, true, true]);
        assert_eq!(runs_of(0, 4, |_| true).0, Vec::<bool>::new());
    }
}
