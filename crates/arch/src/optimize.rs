//! Can a probe be jump-optimized? Decided once, when the probe is registered, from the code of
//! its whole function (the kernel's `can_optimize` for optprobes).
//!
//! A jump-optimized probe replaces the 5 bytes at its address with `jmp rel32` to a detour.
//! The instructions covering those bytes (the *window*) are relocated into the detour. That is
//! only correct when nothing in the program can reach the replaced bytes except by falling into
//! the first one:
//!
//! * the function's bounds are known and the whole function decodes, so that every branch in it
//!   is seen (an `int3` in it is another debugger's breakpoint hiding the byte it replaced);
//! * no direct branch of the function targets bytes +1..+4 of the window: it would land in the
//!   middle of the jump;
//! * no indirect jump lives in the function: a jump table's targets are not known and may be
//!   inside the window (the kernel refuses these too);
//! * the window ends inside the function, and every instruction of it can be relocated
//!   ([`relocate`]: e.g. a call may only end the window, so that no return address points into
//!   the replaced bytes).
//!
//! Branches from other functions into the middle of this one exist too (glibc's
//! `__mempcpy_*` tail-jumps to `__memmove_*+3`; gcc's `foo.cold` parts jump back into `foo`):
//! the engine checks them against the whole object's branches: its candidates, indexed once
//! per object ([`BranchCandidates`](crate::BranchCandidates)), decoded in place for each window.
//! Whether a detour page can be had within ±2 GiB is decided by the engine, which maps it.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::InsnText;
use crate::{analyze_run, relocate, Addr, AnalyzeError, Insn, RelocateError};

/// The length of the `jmp rel32` a jump-optimized probe writes.
pub const JUMP_LEN: usize = 5;

/// Why a probe stays on `int3` instead of a jump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOptimized {
    /// The probe was asked to stay on `int3` (`no_optimize`).
    #[error("jump optimization is turned off for this probe")]
    Disabled,
    /// No symbol gives the function's size, so its branches cannot all be checked.
    #[error("the bounds of the function containing {addr} are unknown, so its branches cannot be checked")]
    UnknownBounds {
        /// The probe address.
        addr: Addr,
    },
    /// The function does not decode as a whole.
    #[error("the function does not decode as a whole: invalid bytes at {at}")]
    Undecodable {
        /// Where decoding failed.
        at: Addr,
    },
    /// The 5 bytes of the jump would reach past the function's end.
    #[error("the {JUMP_LEN}-byte jump at {addr} would cross the function's end at {end}")]
    CrossesFunctionEnd {
        /// The probe address.
        addr: Addr,
        /// The function's end (exclusive).
        end: Addr,
    },
    /// A direct branch of the function, or of another function of its object, lands inside
    /// the bytes the jump replaces.
    #[error("`{text}` at {from} branches to {target}, inside the bytes the jump replaces")]
    BranchIntoWindow {
        /// The branch.
        from: Addr,
        /// The instruction, disassembled.
        text: InsnText,
        /// Its target.
        target: Addr,
    },
    /// A landing pad of a C++ exception (or of Rust's unwinding) lies inside the bytes the
    /// jump replaces: a throw through one of the calls it serves would resume the frame in
    /// the middle of the jump. No branch names it; the object's unwind tables do.
    #[error("{pad} is an exception landing pad (a throw through the calls from {calls} resumes there), inside the bytes the jump replaces")]
    LandingPadInWindow {
        /// The landing pad.
        pad: Addr,
        /// The first byte of the calls whose throws resume there.
        calls: Addr,
    },
    /// The function's object file cannot be read (its code, or its unwind tables), so branches
    /// and exception landing pads inside the window cannot be checked.
    #[error("`{object}` cannot be read, so branches and exception landing pads inside the jump cannot be checked")]
    ObjectUnread {
        /// The object's path.
        object: String,
    },
    /// An indirect jump (a jump table, or a computed tail call) whose targets are not known.
    #[error("`{text}` at {at} is an indirect jump (a jump table?) whose targets cannot be bounded")]
    IndirectJump {
        /// The jump.
        at: Addr,
        /// The instruction, disassembled.
        text: InsnText,
    },
    /// An `int3` in the function: a breakpoint of another debugger hides the byte it replaced.
    #[error("an int3 at {at} in the function hides an instruction the branch check cannot see")]
    ForeignBreakpoint {
        /// Where it is.
        at: Addr,
    },
    /// An exit probe's window (the instructions before the exit, from where the jump goes)
    /// would start before the function: fewer than five bytes of instructions lead to the exit.
    #[error("fewer than {JUMP_LEN} bytes of instructions lead from the function's start at {start} to the exit at {exit}, too few for a jump before it")]
    ExitWindowTooShort {
        /// The exit.
        exit: Addr,
        /// The function's start.
        start: Addr,
    },
    /// An exit window must end with a return or a direct jump (a tail call).
    #[error("`{text}` at {at} is not a return or a direct jump, which an exit window ends with")]
    NotAnExit {
        /// The instruction.
        at: Addr,
        /// The instruction, disassembled.
        text: InsnText,
    },
    /// An instruction of the window cannot be probed at all.
    #[error("the window cannot be analyzed: {0}")]
    Analyze(#[from] AnalyzeError),
    /// The window cannot be relocated.
    #[error("the window cannot be relocated: {0}")]
    Relocate(#[from] RelocateError),
    /// No page for the detour within reach of the probe.
    #[error("no page for the detour within ±2 GiB of {addr}: {reason}")]
    NoDetourPage {
        /// The probe address.
        addr: Addr,
        /// Why.
        reason: String,
    },
    /// A probe at the address has a post-handler and the probed instruction does not fall
    /// through to the next (a branch, call, return or jump): the post-handler runs after it
    /// with a second trap. After any other instruction the detour runs it.
    #[error(
        "a probe at the address has a post-handler and the probed instruction is a branch, which needs a trap after it"
    )]
    PostHandler,
    /// Another probe sits on an instruction the jump would replace: its `int3` would be
    /// overwritten (the kernel unoptimizes such an optprobe as well).
    #[error("another probe at {other} sits inside the bytes the jump would replace")]
    ProbeInWindow {
        /// The other probe's address.
        other: Addr,
    },
    /// Not every thread could be shown to be outside the window before the jump went live
    /// (a thread that blocks dprobe's safepoint signal, or that stays inside dprobe's
    /// out-of-line copy).
    #[error("a thread could not be moved out of the replaced instructions: {reason}")]
    NoSafepoint {
        /// Which thread and why.
        reason: String,
    },
    /// A thread blocked in a system call would resume inside the replaced instructions: its
    /// program counter, or one saved in a signal frame on its stack, is there. The site stays
    /// on `int3` rather than interrupting the call (which could return `EINTR` to the program).
    #[error("thread {tid}, blocked in system call {syscall}, would resume inside the replaced instructions")]
    ThreadParkedInWindow {
        /// The thread.
        tid: i32,
        /// The number of the system call it is blocked in.
        syscall: i64,
    },
    /// The code page under the jump could not be made writable. While a jump is in the code
    /// its page is kept writable, which keeps the kernel from placing another tool's uprobe
    /// there (its `int3` over the jump, or the original byte it writes back when the uprobe
    /// goes, would leave a broken instruction); where the system refuses writable code (a
    /// security policy) the probe stays on `int3`.
    #[error("the code page of {addr} cannot be made writable, which keeps kernel uprobes off a jump: {reason}")]
    CodeNotWritable {
        /// The probe address.
        addr: Addr,
        /// Why.
        reason: String,
    },
    /// The bytes the jump would replace are not those of the file the code is mapped from:
    /// another tool's breakpoint or patch is there, which the jump would hide (and which
    /// would break the jump when taken away).
    #[error("the code at {at} is not what {what} says (found {found:02x?}, expected {expected:02x?}): another tool's breakpoint or patch is there")]
    CodeChanged {
        /// The first byte that differs.
        at: Addr,
        /// What the code was compared with (the mapped file).
        what: String,
        /// The bytes found from `at`.
        found: Vec<u8>,
        /// The bytes expected there.
        expected: Vec<u8>,
    },
    /// No enabled probe at the address: the original code runs.
    #[error("no enabled probe at the address")]
    Disarmed,
    /// The process runs with a CET shadow stack: a pre-handler that moves RIP is honoured
    /// through a return the shadow stack did not see, which would kill the process.
    #[error("the process runs with a CET shadow stack, which the detour's redirect would violate")]
    ShadowStack,
    /// Inside a function on a CPU with AVX, the detour must save the whole extended state
    /// (live `ymm`/`zmm` upper halves, AVX-512 masks: a handler's library calls may change
    /// them), and this CPU or kernel offers no usable `XSAVE` area.
    #[error("{addr} is inside its function and the CPU has AVX, but its extended state cannot be saved with XSAVE: {reason}")]
    LiveVectorState {
        /// The probe address.
        addr: Addr,
        /// Why XSAVE cannot be used.
        reason: String,
    },
    /// The engine that placed the probe has no jump path.
    #[error("this engine places probes with int3 only")]
    Unsupported,
}

impl NotOptimized {
    /// Whether the reason lies outside dprobe and the program's code as built: another tool's
    /// breakpoint or patch in the function, or a system refusing writable code. Worth telling
    /// the user, who may not know it is there.
    pub fn is_outside_dprobe(&self) -> bool {
        matches!(
            self,
            NotOptimized::ForeignBreakpoint { .. }
                | NotOptimized::CodeChanged { .. }
                | NotOptimized::CodeNotWritable { .. }
                | NotOptimized::Analyze(AnalyzeError::Unsupported { reason: crate::Unsupported::Breakpoint, .. })
        )
    }
}

/// Decide whether the probe at `addr` can be jump-optimized; on success, the window (the
/// instructions covering [`JUMP_LEN`] bytes at `addr`) that the detour relocates.
///
/// `function` holds the original bytes of the whole function (never a probe's patch), from its
/// first instruction at `start`; an empty slice means its bounds are unknown.
pub fn can_optimize(function: &[u8], start: Addr, addr: Addr) -> Result<Vec<Insn>, NotOptimized> {
    FunctionCode::decode(function.to_vec(), start).can_optimize(addr)
}

/// A function's original code (never a probe's patch), with what the window checks need of it
/// decoded once: the probes of one function, at its entry, inside it or at its exits, share
/// one decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCode {
    code: Vec<u8>,
    start: Addr,
    branches: FunctionBranches,
}

impl FunctionCode {
    /// The whole function's bytes `code`, from its first instruction at `start` (empty: its
    /// bounds are unknown), decoded.
    pub fn decode(code: Vec<u8>, start: Addr) -> FunctionCode {
        let branches = FunctionBranches::decode(&code, start);
        FunctionCode { code, start, branches }
    }

    /// The function's bytes.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// Whether the vector state at `addr` is the entry's: the instructions from the entry
    /// (past an `endbr64`) up to it touch no register beyond the general ones, and no branch
    /// of the function lands after the entry's first byte up to `addr` (`entry_state.rs`;
    /// branches from the rest of the object are the caller's to check, over the same bytes).
    pub fn has_entry_state_at(&self, addr: Addr) -> bool {
        let entry = self.start.offset(crate::endbr64_len(&self.code) as u64);
        self.branches.blocker.is_none()
            && !self.branches.lands_in(entry.0 + 1, addr.0 + 1)
            && crate::entry_state::straight_from_entry(&self.code, self.start, entry, addr)
    }

    /// [`can_optimize`] for a probe at `addr` in this function.
    pub fn can_optimize(&self, addr: Addr) -> Result<Vec<Insn>, NotOptimized> {
        self.window(addr, entry_window_span)
    }

    /// [`can_optimize_exit`](crate::can_optimize_exit) for an exit probe at `exit` in this
    /// function.
    pub fn can_optimize_exit(&self, exit: Addr) -> Result<Vec<Insn>, NotOptimized> {
        let window = self.window(exit, crate::exit_window::exit_window_span)?;
        debug_assert_eq!(window.last().map(|i| i.addr), Some(exit));
        Ok(window)
    }

    /// The checks every window passes, for the probe at `at` whose window `span` finds (its
    /// first instruction and length, each kind of window checking what is its own).
    fn window(&self, at: Addr, span: WindowSpan) -> Result<Vec<Insn>, NotOptimized> {
        if self.code.is_empty() {
            return Err(NotOptimized::UnknownBounds { addr: at });
        }
        let (from, len) = span(&self.code, self.start, at)?;
        let window = analyze_run(&self.code, self.start, from, len)?;
        let end = self.start.offset(self.code.len() as u64);
        if window.last().map_or(from, Insn::next) > end {
            return Err(NotOptimized::CrossesFunctionEnd { addr: at, end });
        }
        self.branches.check(&self.code, self.start, from, len as u64)?;
        // Relocating to the window's own address decides everything but reach, which depends
        // on where the engine finds a detour page.
        relocate(&window, from)?;
        Ok(window)
    }
}

/// Where a kind of window lies for a probe in a function (its bytes, its first instruction,
/// the probe's address): the window's first instruction and its length.
pub(crate) type WindowSpan = fn(&[u8], Addr, Addr) -> Result<(Addr, usize), NotOptimized>;

/// The window of a probe at `addr`: the [`JUMP_LEN`] bytes there, inside the function.
fn entry_window_span(function: &[u8], start: Addr, addr: Addr) -> Result<(Addr, usize), NotOptimized> {
    let end = start.offset(function.len() as u64);
    if addr < start || addr >= end {
        return Err(AnalyzeError::OutsideCode { addr, start, end }.into());
    }
    if addr.offset(JUMP_LEN as u64) > end {
        return Err(NotOptimized::CrossesFunctionEnd { addr, end });
    }
    Ok((addr, JUMP_LEN))
}

/// What the branch check needs of a whole function, decoded once: its direct branches, and
/// the first instruction that rules out every window (an indirect jump, a foreign `int3`,
/// bytes that do not decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FunctionBranches {
    /// `(target, from)` of each direct jump, conditional branch and call before `blocker`,
    /// sorted.
    branches: Vec<(u64, Addr)>,
    /// The first instruction that refuses every window, and why.
    blocker: Option<(Addr, Blocker)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocker {
    Undecodable,
    IndirectJump,
    ForeignBreakpoint,
}

impl FunctionBranches {
    /// Whether a branch lands on an address in `from..to`.
    fn lands_in(&self, from: u64, to: u64) -> bool {
        let first = self.branches.partition_point(|(target, _)| *target < from);
        self.branches.get(first).is_some_and(|(target, _)| *target < to)
    }

    /// Decode the whole `function` (its original bytes, from its first instruction at
    /// `start`).
    fn decode(function: &[u8], start: Addr) -> FunctionBranches {
        let mut branches = Vec::new();
        let mut blocker = None;
        let mut decoder = Decoder::with_ip(64, function, start.0, DecoderOptions::NONE);
        let mut i = Instruction::default();
        while decoder.can_decode() {
            let at = Addr(decoder.ip());
            decoder.decode_out(&mut i);
            let stop = match i.flow_control() {
                _ if i.is_invalid() => Some(Blocker::Undecodable),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call => {
                    branches.push((i.near_branch_target(), at));
                    None
                }
                FlowControl::IndirectBranch => Some(Blocker::IndirectJump),
                FlowControl::Interrupt if i.mnemonic() == Mnemonic::Int3 => Some(Blocker::ForeignBreakpoint),
                _ => None,
            };
            if let Some(why) = stop {
                blocker = Some((at, why));
                break;
            }
        }
        branches.sort_unstable();
        FunctionBranches { branches, blocker }
    }

    /// Refuse, for the window at `addr`, the first instruction of the function (in address
    /// order) that branches into bytes +1..+`len`-1 of the window or rules out every window.
    pub(crate) fn check(&self, function: &[u8], start: Addr, addr: Addr, len: u64) -> Result<(), NotOptimized> {
        let first = self.branches.partition_point(|(target, _)| *target <= addr.0);
        let last = self.branches.partition_point(|(target, _)| *target < addr.0 + len);
        let into = self.branches[first..last].iter().min_by_key(|(_, from)| *from);
        let text = |at: Addr| InsnText::of(&function[(at.0 - start.0) as usize..], at);
        if let Some(&(target, from)) = into {
            return Err(NotOptimized::BranchIntoWindow { from, text: text(from), target: Addr(target) });
        }
        match self.blocker {
            None => Ok(()),
            Some((at, Blocker::Undecodable)) => Err(NotOptimized::Undecodable { at }),
            Some((at, Blocker::IndirectJump)) => Err(NotOptimized::IndirectJump { at, text: text(at) }),
            Some((at, Blocker::ForeignBreakpoint)) => Err(NotOptimized::ForeignBreakpoint { at }),
        }
    }
}

/// Which registers beyond the general ones a detour must keep for the code it interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorState {
    /// `xmm0`-`xmm15`: at a function's entry (only arguments are live, and the calling
    /// convention passes them there), or on a CPU without AVX (nothing else exists).
    Xmm,
    /// Everything `XSAVE` saves: inside a function on a CPU with AVX, where upper halves of
    /// `ymm`/`zmm` registers, `zmm16`-`zmm31` and mask registers may be live, and a handler's
    /// library calls (`memcpy`, ... end with `vzeroupper`) would change them.
    Full,
}

/// The vector state a detour at `addr` in the function at `start` keeps (see [`VectorState`]).
/// `entry_len` is the length of an `endbr64` at `start` (0 without): the instruction after
/// it is still the entry.
pub fn vector_state(addr: Addr, start: Addr, entry_len: u64, cpu_has_avx: bool) -> VectorState {
    if !cpu_has_avx || addr == start || (entry_len > 0 && addr == start.offset(entry_len)) {
        VectorState::Xmm
    } else {
        VectorState::Full
    }
}

/// The original bytes under the jump: the first [`JUMP_LEN`] bytes of `window` (as
/// [`can_optimize`] returned it, which covers them).
pub fn window_head(window: &[Insn]) -> [u8; JUMP_LEN] {
    // Without allocating: the registrar runs this while the C library's allocator may be
    // probed.
    let mut head = [0; JUMP_LEN];
    for (slot, byte) in head.iter_mut().zip(window.iter().flat_map(|i| i.code().iter())) {
        *slot = *byte;
    }
    head
}
