//! Where a started program can load a library before any constructor of its own libraries
//! runs: right after the C library's initialisation.
//!
//! At the program's entry point every constructor has run already, so a library loaded there
//! misses the calls they make. At the dynamic loader's first consistent notification
//! (`_dl_debug_state` with `r_state == RT_CONSISTENT`) nothing has run yet, but `dlopen`
//! called there would run the C library's own constructor from inside the load, with the
//! arguments `dlopen` passes on (`__libc_argc`, `__libc_argv`, `__environ`), which only that
//! constructor sets: the program would lose its environment and its name. So the program is
//! held at the notification just long enough to find the C library's last initialisation
//! function, then runs until that function returns into the loader. The C library is then
//! initialised as for any constructor, no other library's constructor has run (the loader
//! runs a library's dependencies first, and everything depends on the C library), and a
//! `dlopen` there is what a constructor calling `dlopen` does.

use dprobe_arch::{Addr, Memory, INT3};
use dprobe_sym::{read_maps_of, Mapping, Symbols};
use object::elf::{DT_INIT, DT_INIT_ARRAY, DT_INIT_ARRAYSZ, PT_DYNAMIC, PT_LOAD};

use crate::error::TraceError;
use crate::library::LoadError;
use crate::loader::r_debug_addr;
use crate::remote_elf::{dynamic_entries, program_headers, word};
use crate::sys::{self, RemoteMemory};

/// The loader's notification function.
const HOOK: &str = "_dl_debug_state";
/// `r_debug.r_state` when the list of objects is consistent.
const RT_CONSISTENT: i32 = 0;

/// Resume a program stopped after `execve` until its C library is initialised and before
/// any other library's constructor runs, and leave it stopped there. Refused, with the
/// reason, where that point cannot be found (no dynamic loader, no C library to wait for).
pub(crate) fn run_to_libc_initialized(pid: i32, memory: &mut RemoteMemory) -> Result<(), LoadError> {
    let refused = |reason: &str| LoadError::Refused { pid, reason: reason.to_owned() };
    let maps = read_maps_of(pid as u32).map_err(TraceError::from)?;
    let loader =
        |m: &Mapping| m.path.as_deref().and_then(|p| p.rsplit('/').next()).is_some_and(|f| f.starts_with("ld-"));
    if !maps.iter().any(loader) {
        return Err(refused("it has no dynamic loader (a static program)"));
    }
    let symbols = Symbols::load(&maps);
    let hook = symbols
        .functions()
        .iter()
        .find(|f| &*f.name == HOOK && f.object_file_name().starts_with("ld-"))
        .map(|f| f.start)
        .ok_or_else(|| refused("its dynamic loader has no `_dl_debug_state` to stop at before the constructors"))?;
    let mut notifications = 0;
    run_to(pid, memory, hook, |memory| {
        notifications += 1;
        match r_debug_addr(pid, memory) {
            Some(r_debug) => {
                let mut state = [0u8; 4];
                memory.read(r_debug.offset(24), &mut state).is_ok() && i32::from_le_bytes(state) == RT_CONSISTENT
            }
            // The loader says "adding" first, then "consistent".
            None => notifications >= 2,
        }
    })?;
    let maps = read_maps_of(pid as u32).map_err(TraceError::from)?;
    let last = last_libc_initializer(memory, &maps)
        .ok_or_else(|| refused("its C library's initialisation could not be found, to load the agent after it"))?;
    let Some(init) = last else {
        // A C library with nothing to initialise: it is ready now.
        return Ok(());
    };
    run_to(pid, memory, init, |_| true)?;
    let regs = sys::get_regs(pid)?;
    let mut word = [0u8; 8];
    memory.read(Addr(regs.rsp), &mut word).map_err(TraceError::from)?;
    let back = Addr(u64::from_le_bytes(word));
    let caller_sp = regs.rsp + 8;
    // Back in the loader, on the same stack frame (not a nested call of the same function).
    run_to(pid, memory, back, |_| sys::get_regs(pid).is_ok_and(|r| r.rsp == caller_sp))
}

/// Run the program until it executes the instruction at `at` and `arrived` says it is the
/// stop wanted; leave it stopped there, with the instruction not yet run and the code as it
/// was. The program's signals are delivered meanwhile.
fn run_to(
    pid: i32,
    memory: &mut RemoteMemory,
    at: Addr,
    mut arrived: impl FnMut(&mut RemoteMemory) -> bool,
) -> Result<(), LoadError> {
    let mut original = [0u8];
    memory.read(at, &mut original).map_err(TraceError::from)?;
    memory.write(at, &[INT3]).map_err(TraceError::from)?;
    let mut signal = 0;
    let mut group_stop = false;
    loop {
        if group_stop {
            sys::listen(pid)?;
        } else {
            sys::cont(pid, signal)?;
        }
        signal = 0;
        let (_, status) = sys::wait(pid)?;
        if libc::WIFSIGNALED(status) {
            // Killed (a Ctrl-C to the process group as it started): said as the ptrace
            // engine says it.
            let exit = crate::error::Exit::Signal(libc::WTERMSIG(status));
            return Err(TraceError::EndedBeforeEntry(exit).into());
        }
        if !libc::WIFSTOPPED(status) {
            return Err(LoadError::Refused { pid, reason: "it ended before its constructors ran".into() });
        }
        let sig = libc::WSTOPSIG(status);
        if sys::event_of(status) != 0 {
            // A `SIGSTOP` from outside as it starts: stopped until it is continued.
            group_stop = crate::thread::is_group_stop(status);
            continue;
        }
        if sig == libc::SIGTRAP {
            let mut r = sys::get_regs(pid)?;
            if r.rip == at.0 + 1 {
                // Back to the instruction, which runs as it was if this is not the stop.
                memory.write(at, &original).map_err(TraceError::from)?;
                r.rip = at.0;
                sys::set_regs(pid, &r)?;
                if arrived(memory) {
                    return Ok(());
                }
                crate::inject::step(pid, pid, 0)?;
                memory.write(at, &[INT3]).map_err(TraceError::from)?;
                continue;
            }
        }
        signal = sig;
    }
}

/// The function the C library's initialisation runs last, `Some(None)` when it has none,
/// from its dynamic section in memory; `None` when no C library is mapped or its dynamic
/// section cannot be read.
fn last_libc_initializer(memory: &mut RemoteMemory, maps: &[Mapping]) -> Option<Option<Addr>> {
    let is_libc = |m: &&Mapping| {
        m.path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .is_some_and(|f| f.starts_with("libc.so") || f.starts_with("libc-"))
    };
    let first = maps.iter().filter(is_libc).min_by_key(|m| m.start.0)?;
    let path = first.path.clone()?;
    let code: Vec<&Mapping> = maps.iter().filter(|m| m.path.as_deref() == Some(path.as_str()) && m.exec).collect();
    let base = first.start.0;
    let mut header = [0u8; 64];
    memory.read(Addr(base), &mut header).ok()?;
    if &header[..4] != b"\x7fELF" {
        return None;
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().ok()?);
    let phnum = u16::from_le_bytes(header[0x38..0x3a].try_into().ok()?);
    let (mut lowest, mut dynamic) = (None::<u64>, None);
    for header in program_headers(memory, base + phoff, u64::from(phnum)) {
        let (p_type, vaddr) = header?;
        match p_type {
            PT_LOAD => lowest = Some(lowest.map_or(vaddr, |l| l.min(vaddr))),
            PT_DYNAMIC => dynamic = Some(vaddr),
            _ => {}
        }
    }
    let bias = base.checked_sub(lowest? & !0xfff)?;
    let (mut init, mut array, mut size) = (None, None, 0);
    for entry in dynamic_entries(memory, bias + dynamic?, 1024) {
        let (tag, value) = entry?;
        // The loader leaves these unrelocated (it adds the bias as it calls them); one that
        // already holds an address in the library is taken as it is.
        let address = |v: u64| if v >= base { v } else { bias + v };
        match u32::try_from(tag) {
            Ok(DT_INIT) => init = Some(address(value)),
            Ok(DT_INIT_ARRAY) => array = Some(address(value)),
            Ok(DT_INIT_ARRAYSZ) => size = value,
            _ => {}
        }
    }
    let count = size / 8;
    let last = match (array, count) {
        (Some(array), 1..=4096) => Some(word(memory, array + (count - 1) * 8)?),
        _ => init,
    };
    match last {
        Some(f) if code.iter().any(|m| m.contains(Addr(f))) => Some(Some(Addr(f))),
        Some(_) => None,
        None => Some(None),
    }
}
