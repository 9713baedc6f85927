//! The detour of a jump-optimized probe: the code its `jmp rel32` leads to.
//!
//! Layout, from the detour's address `at`:
//!
//! ```text
//! at+0   the probe address (8 bytes), or an engine's word (`Detour::set_word`): how the
//!        dispatcher finds the site from the return address
//! at+8   the address of the engine's entry stub (8 bytes), called through memory (any distance)
//! at+16  redirect: ret 128           ; to where a handler sent RIP, see below
//! at+24  the address of the engine's post stub (8 bytes; 0 without post-handlers)
//! at+32  entry:    lea rsp,[rsp-136] ; skip the red zone, and keep one slot for a redirect
//!                  call [at+8]       ; the stub saves every register, dispatches, restores
//!                  lea rsp,[rsp+136]
//!        window:   the relocated instructions, then a jump back after them
//! ```
//!
//! With post-handlers ([`detour_code_with_post`]), the first relocated instruction (the probed
//! one, which must fall through to the next) is followed by a *post block*:
//!
//! ```text
//!        jmp +16                    ; over two words the post stub reads:
//!        .quad at                   ;   the detour (its site, its redirect)
//!        .quad probe+len            ;   the original address after the probed instruction
//!        lea rsp,[rsp-136]
//!        call [at+24]               ; saves, runs the post-handlers, restores
//!        lea rsp,[rsp+136]
//! ```
//!
//! so the post stub finds both words at fixed distances below its return address
//! ([`POST_DETOUR_BACK`], [`POST_NEXT_BACK`]), and the frame it sees has the entry's shape.
//!
//! The stub returns to the instruction after the call, or, when a handler moved RIP (or the
//! stack pointer), with the stack pointer at `new_rsp - 136`, where it has stored the new RIP,
//! to `redirect`: `ret 128` then jumps there and leaves the stack pointer at `new_rsp`.
//! Nothing is written into the red zone of the probed code, and no register or flag is
//! changed on the way to the window.

use crate::relocate::relocate_then;
use crate::{
    call_through_code, move_rsp_code, relocate, relocate_with, ret_pop_code, Addr, CodeWriter, Insn, NotOptimized,
    Relocated,
};

/// Bytes below the stack pointer the probed code may use without moving it (System V).
const RED_ZONE: i32 = 128;
/// Offset of the `ret 128` reached when a handler moves RIP.
pub const DETOUR_REDIRECT: u64 = 16;
/// Offset of the address of the post stub.
pub const DETOUR_POST_STUB: u64 = 24;
/// Offset of the detour's entry (the target of the probe's jump).
pub const DETOUR_ENTRY: u64 = 32;
/// Offset of the return address of the detour's call to the stub.
pub const DETOUR_RETURN: u64 = DETOUR_ENTRY + 8 + 6;
/// Offset of the relocated window.
pub const DETOUR_WINDOW: u64 = DETOUR_RETURN + 8;
/// How far below the stack pointer at the probe the stub's return address is stored.
pub const DETOUR_STACK_SKIP: u64 = RED_ZONE as u64 + 8;
/// From the post stub's return address back to the word holding the detour's address
/// (the call, the `lea` and the two words).
pub const POST_DETOUR_BACK: u64 = 6 + 8 + 16;
/// From the post stub's return address back to the word holding the original address after
/// the probed instruction.
pub const POST_NEXT_BACK: u64 = 6 + 8 + 8;

/// A detour's code and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detour {
    /// Where it runs from.
    pub addr: Addr,
    /// The probe address.
    pub site: Addr,
    /// All of it, from `addr`.
    pub code: Vec<u8>,
    /// The relocated window (at `addr + DETOUR_WINDOW`); for an exit probe, the exit alone.
    pub window: Relocated,
    /// For an exit probe ([`exit_detour_code`]): the copy of the instructions before the exit,
    /// where its jump leads, which continues into the detour's entry.
    pub prefix: Option<Relocated>,
    /// Where the jump goes: the probe, or the first instruction of an exit probe's window.
    pub jump_from: Addr,
}

impl Detour {
    /// The entry: where the stub is called with the registers as at the probe.
    pub fn entry(&self) -> Addr {
        self.addr.offset(DETOUR_ENTRY)
    }

    /// The jump's target: the entry, or an exit probe's copy of the instructions before it.
    pub fn target(&self) -> Addr {
        self.prefix.as_ref().map_or(self.entry(), |p| p.addr)
    }

    /// Where a thread stopped at `original`, an instruction of the window, continues in the
    /// detour: the copy of an instruction before an exit, the entry for the probed one (its
    /// handlers have not run), or the copy of a later one (an entry window's).
    pub fn copy_of(&self, original: Addr) -> Option<Addr> {
        match &self.prefix {
            Some(_) if original == self.site => Some(self.entry()),
            Some(prefix) => prefix.copy_of(original),
            None => self.window.copy_of(original),
        }
    }

    /// Replace the word at +0 (the probe address) with an engine's own, e.g. the address of
    /// its record of the probe, which its stub then finds without a lookup.
    pub fn set_word(&mut self, word: u64) {
        self.code[..8].copy_from_slice(&word.to_le_bytes());
    }

    /// The `jmp rel32` that replaces the window's first five bytes.
    pub fn jump(&self) -> [u8; 5] {
        crate::jmp_rel32(self.jump_from, self.target())
            .expect("the target is in reach: checked when the detour was built")
    }
}

/// Build the detour of the exit probe at `site` (a `ret` or a tail jump) whose window is
/// `window` (as [`crate::can_optimize_exit`] returned it: instructions ending with the exit),
/// to run from `at`, calling `stub`. The jump at the window's start leads to a copy of the
/// instructions before the exit, placed after the relocated exit, which then continues into
/// the entry: the stub sees the registers exactly as at the exit (`rip` is `site`, the stack
/// pointer as there), and the detour runs the exit afterwards.
///
/// ```text
/// at+0 .. entry, head       as in `detour_code`
/// window:                   the relocated exit (`ret`, or the jump re-targeted)
/// prefix:                   the relocated instructions before it, then `jmp entry`
/// ```
pub fn exit_detour_code(site: Addr, window: &[Insn], at: Addr, stub: Addr) -> Result<Detour, NotOptimized> {
    let (exit, before) = window.split_last().ok_or(NotOptimized::Relocate(crate::RelocateError::Empty))?;
    if exit.addr != site {
        return Err(NotOptimized::NotAnExit { at: exit.addr, text: exit.text_when_shown() });
    }
    let mut detour = build(site, std::slice::from_ref(exit), at, stub, None)?;
    if before.is_empty() {
        return Ok(detour);
    }
    let prefix_at = at.offset(detour.code.len() as u64);
    let prefix = relocate_then(before, prefix_at, &|_| {}, Some(detour.entry()))?;
    let from = before[0].addr;
    if i32::try_from(prefix_at.0.wrapping_sub(from.offset(5).0) as i64).is_err() {
        return Err(NotOptimized::NoDetourPage { addr: site, reason: format!("{at} is out of a jump's reach") });
    }
    detour.code.extend(&prefix.code);
    detour.prefix = Some(prefix);
    detour.jump_from = from;
    Ok(detour)
}

/// Build the detour of the probe at `site` whose window is `window` (as
/// [`crate::can_optimize`] returned it), to run from `at`, calling `stub`.
pub fn detour_code(site: Addr, window: &[Insn], at: Addr, stub: Addr) -> Result<Detour, NotOptimized> {
    build(site, window, at, stub, None)
}

/// [`detour_code`], with a post block calling `post_stub` after the probed instruction (see
/// the module's comment). Refused ([`NotOptimized::PostHandler`]) when the probed instruction
/// does not fall through to the next ([`post_fits`]).
pub fn detour_code_with_post(
    site: Addr,
    window: &[Insn],
    at: Addr,
    stub: Addr,
    post_stub: Addr,
) -> Result<Detour, NotOptimized> {
    post_fits(window)?;
    build(site, window, at, stub, Some(post_stub))
}

/// Whether post-handlers can run in a detour of `window`: its first instruction always falls
/// through to the next (no branch, call, return or jump, which would leave before the post
/// block; the trap path single-steps those).
pub fn post_fits(window: &[Insn]) -> Result<(), NotOptimized> {
    let first = window.first().ok_or(NotOptimized::PostHandler)?;
    match first.decode().flow_control() {
        iced_x86::FlowControl::Next => Ok(()),
        _ => Err(NotOptimized::PostHandler),
    }
}

fn build(site: Addr, window: &[Insn], at: Addr, stub: Addr, post: Option<Addr>) -> Result<Detour, NotOptimized> {
    let entry = at.offset(DETOUR_ENTRY);
    let rel = entry.0.wrapping_sub(site.offset(5).0) as i64;
    if i32::try_from(rel).is_err() {
        return Err(NotOptimized::NoDetourPage { addr: site, reason: format!("{at} is out of a jump's reach") });
    }
    let encode = |e: crate::EncodeError| NotOptimized::Relocate(crate::RelocateError::Encode(e.0));
    // The fixed parts, encoded by hand (the head's layout is what `DETOUR_RETURN` and
    // `DETOUR_WINDOW` say: 8 + 6 + 8 bytes).
    let redirect = ret_pop_code(RED_ZONE as u16);
    let skip = DETOUR_STACK_SKIP as i32;
    let call = call_through_code(at.offset(DETOUR_ENTRY + 8), at.offset(8)).map_err(encode)?;
    let after_probed = window.first().map_or(site, Insn::next);
    let post_block = |w: &mut CodeWriter| {
        // `jmp +16` over the two words, written as data: nothing to re-target.
        w.data(&[0xeb, 16]);
        w.data(&at.0.to_le_bytes());
        w.data(&after_probed.0.to_le_bytes());
        w.move_rsp(-(DETOUR_STACK_SKIP as i32));
        w.call_through(at.offset(DETOUR_POST_STUB));
        w.move_rsp(DETOUR_STACK_SKIP as i32);
    };
    let window = match post {
        Some(_) => relocate_with(window, at.offset(DETOUR_WINDOW), &post_block)?,
        None => relocate(window, at.offset(DETOUR_WINDOW))?,
    };
    let mut code = Vec::with_capacity(DETOUR_WINDOW as usize + window.code.len());
    code.extend(site.0.to_le_bytes());
    code.extend(stub.0.to_le_bytes());
    code.extend(redirect);
    code.resize(DETOUR_POST_STUB as usize, 0xcc);
    code.extend(post.map_or(0, |p| p.0).to_le_bytes());
    code.extend(move_rsp_code(-skip));
    code.extend(call);
    code.extend(move_rsp_code(skip));
    debug_assert_eq!(code.len() as u64, DETOUR_WINDOW, "the detour's head has a fixed layout");
    code.extend(&window.code);
    Ok(Detour { addr: at, site, code, window, prefix: None, jump_from: site })
}
