//! `dprobe list FILE --lines FUNCTION`: a function's source lines, numbered where they have
//! code (where a line probe can go), as `perf probe -L` shows them.

use anyhow::{anyhow, bail, Result};
use dprobe_dwarf::{find_function, DebugInfo, LineTable};

/// Print the lines of `function` in binary `path`.
pub fn list_lines(path: &str, function: &str, out: &mut dyn std::io::Write) -> Result<i32> {
    let info = DebugInfo::load(path)
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("`{path}` has no debug information (build it with -g, or install its debug file)"))?;
    let f = find_function(info.dwarf(), function)
        .map_err(|e| anyhow!("reading the debug information of `{path}`: {e}"))?
        .ok_or_else(|| anyhow!("no function `{function}` in the debug information of `{path}`"))?;
    let table = LineTable::load(info.dwarf()).map_err(|e| anyhow!("reading the line tables of `{path}`: {e}"))?;
    let Some((file, first, last)) = f.line_span(&table) else {
        bail!("the debug information does not say where `{function}` is defined")
    };
    let with_code = table.lines_with_code(file);
    let source = std::fs::read_to_string(file).ok();
    let copies = match f.inlined.len() {
        0 => String::new(),
        1 => ", and 1 inlined copy".into(),
        n => format!(", and {n} inlined copies"),
    };
    let out_of_line = if f.out_of_line.is_empty() { "no out-of-line copy" } else { "out of line" };
    writeln!(out, "<{function}@{file}:{first}-{last}> ({out_of_line}{copies})")?;
    let numbered = "lines with numbers have code: probe them as FILE:LINE or FUNCTION:+N";
    match &source {
        Some(_) => writeln!(out, "  {numbered}")?,
        None => writeln!(out, "  {numbered} (the source file cannot be read: only those are shown)")?,
    }
    let text: Vec<&str> = source.as_deref().map(|s| s.lines().collect()).unwrap_or_default();
    for line in first..=last {
        let code = with_code.contains(&line);
        let shown = text.get(line as usize - 1).copied();
        let number = if code { format!("{line:>6} {:>4}", format!("+{}", line - first)) } else { " ".repeat(11) };
        match shown {
            Some(t) => writeln!(out, "{number}  {t}")?,
            None if code => writeln!(out, "{number}")?,
            None => {}
        }
    }
    Ok(0)
}
