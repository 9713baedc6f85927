//! What the user is told of the jumps that stay after the probes went: another tool's
//! breakpoint (gdb's, a kernel uprobe's) was on a jump's first byte as its probe was removed.
//! That tool saved the jump's `e9` as the original byte and writes it back when it goes, so
//! the jump stays, into a detour that runs no handler (`dprobe_inproc::jumps_kept`): the
//! program runs as it would untraced, and the next session of an agent in it puts the
//! original code back once the breakpoint has gone.

/// One note per jump kept, sent to the tracer before the session's end is confirmed.
pub(crate) fn notes() -> Vec<String> {
    dprobe_inproc::jumps_kept()
        .into_iter()
        .map(|(addr, symbol)| {
            let place = symbol.map_or_else(|| format!("{:#x}", addr.0), |s| format!("{s} ({:#x})", addr.0));
            format!(
                "{place}: another tool's breakpoint (a debugger's, or a kernel uprobe's) is on the first byte of \
                 dprobe's jump there, and will write the jump back when it goes; the jump stays, into code that \
                 runs the original instructions and no handler, until a later dprobe session finds that \
                 breakpoint gone"
            )
        })
        .collect()
}
