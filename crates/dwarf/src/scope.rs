//! A function in the DWARF and the variables in scope at an address inside it: its
//! parameters, and the locals of every lexical block that covers the address (inner ones
//! hide outer ones of the same name).

use gimli::Reader as _;
use gimli::UnitOffset;

use crate::debuginfo::{DebugInfo, Reader};
use crate::types::UnitCx;
use crate::VarError;

/// A function's out-of-line code as the DWARF describes it.
pub struct Function {
    pub(crate) unit: gimli::Unit<Reader>,
    pub(crate) die: UnitOffset,
    /// Its name.
    pub name: String,
    /// Link-time address of its first instruction.
    pub low_pc: u64,
    /// Link-time address just past its code (of the range that holds `low_pc`).
    pub high_pc: u64,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Function({} at {:#x}..{:#x})", self.name, self.low_pc, self.high_pc)
    }
}

/// A variable's entry.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    pub name: String,
    pub die: UnitOffset,
    pub is_param: bool,
}

impl Function {
    pub(crate) fn cx<'a>(&'a self, info: &'a DebugInfo) -> UnitCx<'a> {
        UnitCx { dwarf: info.dwarf(), unit: &self.unit }
    }

    /// Every variable in scope at `pc`: parameters first, in order, then locals.
    pub(crate) fn vars_at(&self, info: &DebugInfo, pc: u64) -> Result<Vec<Var>, VarError> {
        let cx = self.cx(info);
        let mut out: Vec<Var> = Vec::new();
        let mut tree = self.unit.entries_tree(Some(self.die))?;
        collect(&cx, tree.root()?, pc, &mut out)?;
        // An inner declaration hides an outer one: keep the last of each name.
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<Var> = out.into_iter().rev().filter(|v| seen.insert(v.name.clone())).collect();
        kept.reverse();
        kept.sort_by_key(|v| !v.is_param);
        Ok(kept)
    }

    /// The address after the prologue: the first line-table row past the entry that starts
    /// a statement (one marked `prologue_end` if the compiler says so), as `perf probe` and
    /// gdb do; the entry itself when there is none.
    pub fn after_prologue(&self) -> Result<u64, VarError> {
        let Some(program) = self.unit.line_program.clone() else { return Ok(self.low_pc) };
        let mut rows = program.rows();
        let mut first_stmt = None;
        let mut prologue_end = None;
        while let Some((_, row)) = rows.next_row()? {
            let a = row.address();
            if row.end_sequence() || a <= self.low_pc || a >= self.high_pc {
                continue;
            }
            if row.prologue_end() {
                prologue_end = Some(prologue_end.map_or(a, |p: u64| p.min(a)));
            }
            if row.is_stmt() {
                first_stmt = Some(first_stmt.map_or(a, |p: u64| p.min(a)));
            }
        }
        Ok(prologue_end.or(first_stmt).unwrap_or(self.low_pc))
    }

    /// `(line, address)` rows of the function's unit, sorted by address (for "available at
    /// lines A-B").
    pub(crate) fn line_rows(&self) -> Result<Vec<(u64, u64)>, VarError> {
        let Some(program) = self.unit.line_program.clone() else { return Ok(Vec::new()) };
        let mut rows = program.rows();
        let mut out = Vec::new();
        while let Some((_, row)) = rows.next_row()? {
            if let (false, Some(line)) = (row.end_sequence(), row.line()) {
                out.push((row.address(), line.get()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

fn collect(
    cx: &UnitCx<'_>,
    node: gimli::EntriesTreeNode<'_, '_, '_, Reader>,
    pc: u64,
    out: &mut Vec<Var>,
) -> Result<(), VarError> {
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        match e.tag() {
            gimli::DW_TAG_formal_parameter | gimli::DW_TAG_variable => {
                if let Some(name) = cx.name(e) {
                    out.push(Var { name, die: e.offset(), is_param: e.tag() == gimli::DW_TAG_formal_parameter });
                }
            }
            gimli::DW_TAG_lexical_block if covers(cx, e, pc)? => collect(cx, child, pc, out)?,
            _ => {}
        }
    }
    Ok(())
}

fn covers(cx: &UnitCx<'_>, e: &gimli::DebuggingInformationEntry<'_, '_, Reader>, pc: u64) -> Result<bool, VarError> {
    let mut ranges = cx.dwarf.die_ranges(cx.unit, e)?;
    let mut any = false;
    while let Some(r) = ranges.next()? {
        any = true;
        if r.begin <= pc && pc < r.end {
            return Ok(true);
        }
    }
    // A block without ranges holds the whole function.
    Ok(!any)
}

impl DebugInfo {
    /// The out-of-line function named `name` (its DWARF name or linkage name), if the DWARF
    /// has one with code.
    pub fn function(&self, name: &str) -> Result<Option<Function>, VarError> {
        let found = self.find_function(&|cx, e, _| {
            cx.name(e).as_deref() == Some(name) || linkage_name(cx, e).as_deref() == Some(name)
        })?;
        Ok(found.map(|f| Function { name: name.to_owned(), ..f }))
    }

    /// The out-of-line function whose code holds link-time address `pc` (the caller, for an
    /// address in an inlined copy), if the DWARF has one.
    pub fn function_at(&self, pc: u64) -> Result<Option<Function>, VarError> {
        self.find_function(&|cx, e, ranges| cx.name(e).is_some() && ranges.iter().any(|r| r.begin <= pc && pc < r.end))
    }

    /// The first subprogram with code that `wanted` accepts (given its code ranges), named
    /// by its DWARF name.
    #[allow(clippy::type_complexity)]
    fn find_function(
        &self,
        wanted: &dyn Fn(&UnitCx<'_>, &gimli::DebuggingInformationEntry<'_, '_, Reader>, &[gimli::Range]) -> bool,
    ) -> Result<Option<Function>, VarError> {
        let dwarf = self.dwarf();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let found = {
                let cx = UnitCx { dwarf, unit: &unit };
                let mut entries = unit.entries();
                let mut found = None;
                while let Some((_, e)) = entries.next_dfs()? {
                    if e.tag() != gimli::DW_TAG_subprogram {
                        continue;
                    }
                    let mut ranges = dwarf.die_ranges(&unit, e)?;
                    let mut all = Vec::new();
                    while let Some(r) = ranges.next()? {
                        if r.begin < r.end {
                            all.push(r);
                        }
                    }
                    if all.is_empty() || !wanted(&cx, e, &all) {
                        continue;
                    }
                    let first = all.iter().min_by_key(|r| r.begin).copied();
                    if let Some(r) = first {
                        found = Some((e.offset(), cx.name(e).unwrap_or_default(), r.begin, r.end));
                        break;
                    }
                }
                found
            };
            if let Some((die, name, low_pc, high_pc)) = found {
                return Ok(Some(Function { unit, die, name, low_pc, high_pc }));
            }
        }
        Ok(None)
    }
}

/// A subprogram's linkage (mangled) name, if it has one.
fn linkage_name(cx: &UnitCx<'_>, e: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Option<String> {
    let v = e.attr_value(gimli::DW_AT_linkage_name).ok()??;
    let s = cx.dwarf.attr_string(cx.unit, v).ok()?;
    s.to_string_lossy().ok().map(|s| s.into_owned())
}
