//! What the user is told of the jumps that stay after the probes went: a debugger's
//! breakpoint (gdb's) was on a jump's first byte as its probe was removed. The debugger saved
//! the jump's `e9` as the original byte and writes it back when it goes, so the jump stays,
//! into a detour that runs no handler (`dprobe_inproc::kept_jumps`): the program runs as it
//! would untraced, and the next session of an agent in it puts the original code back once
//! the breakpoint has gone.

/// One note per jump kept, sent to the tracer before the session's end is confirmed.
pub(crate) fn notes() -> Vec<String> {
    dprobe_inproc::kept_jumps()
        .into_iter()
        .map(|(addr, symbol)| {
            let place = symbol.map_or_else(|| format!("{:#x}", addr.0), |s| format!("{s} ({:#x})", addr.0));
            format!(
                "{place}: a debugger's breakpoint is on the first byte of dprobe's jump there, and the debugger will \
                 write the jump back when it removes it; so the jump stays, into code that runs the original \
                 instructions and no handler (its page stays writable), until a later dprobe session finds the \
                 breakpoint gone and puts the original code back"
            )
        })
        .collect()
}
