//! Source lines and their addresses, from the DWARF line tables of every compilation unit:
//! where a line's code starts (each copy of it, when the compiler duplicated or inlined it),
//! which lines have code at all, and which files the binary was built from.

use std::collections::{BTreeSet, HashMap};

use gimli::Reader as _;

use crate::debuginfo::Reader;

/// One row of a line table that dprobe keeps.
#[derive(Debug, Clone, Copy)]
struct Row {
    address: u64,
    file: u32,
    line: u32,
    is_stmt: bool,
    /// The first row of a sequence (rows of different sequences are not neighbours).
    starts_sequence: bool,
}

/// The line tables of a binary: every row of every unit, in the tables' order.
#[derive(Debug, Default)]
pub struct LineTable {
    files: Vec<String>,
    rows: Vec<Row>,
}

/// Why a line cannot be probed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No file of the line tables has that name or path suffix.
    #[error("no source file `{file}` in the debug information{}", known_files(known))]
    NoSuchFile {
        /// The file as asked for.
        file: String,
        /// Some of the files it has (their names).
        known: Vec<String>,
    },
    /// Several different files end with that name.
    #[error("`{file}` names several source files ({}): give more of its path", paths.join(", "))]
    Ambiguous {
        /// The file as asked for.
        file: String,
        /// The files it names.
        paths: Vec<String>,
    },
    /// The line has no code (a comment, a blank line, a declaration, or code the compiler
    /// removed).
    #[error("{file}:{line} has no code; {}", nearest(*above, *below))]
    NoCode {
        /// The file.
        file: String,
        /// The line.
        line: u32,
        /// The nearest line above with code.
        above: Option<u32>,
        /// The nearest line below with code.
        below: Option<u32>,
    },
}

fn known_files(known: &[String]) -> String {
    match known {
        [] => " (it has no line tables)".into(),
        files => format!(" (its files include {})", files.join(", ")),
    }
}

fn nearest(above: Option<u32>, below: Option<u32>) -> String {
    match (above, below) {
        (Some(a), Some(b)) => format!("the nearest lines with code are {a} (above) and {b} (below)"),
        (Some(a), None) => format!("the nearest line with code is {a} (above; none below)"),
        (None, Some(b)) => format!("the nearest line with code is {b} (below; none above)"),
        (None, None) => "the file has no line with code".into(),
    }
}

/// Whether `path` is the file a user calls `name`: the same path, or `name` is its last
/// components (`lines.c`, `src/lines.c`).
pub fn file_matches(path: &str, name: &str) -> bool {
    let name = name.strip_prefix("./").unwrap_or(name);
    path == name || path.strip_suffix(name).is_some_and(|rest| rest.ends_with('/'))
}

impl LineTable {
    /// Read every unit's line table.
    pub fn load(dwarf: &gimli::Dwarf<Reader>) -> Result<LineTable, gimli::Error> {
        let mut table = LineTable::default();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let Some(program) = unit.line_program.clone() else { continue };
            // Each file index of this unit, interned once.
            let mut file_ids: HashMap<u64, u32> = HashMap::new();
            let mut rows = program.rows();
            let mut new_sequence = true;
            while let Some((header, row)) = rows.next_row()? {
                if row.end_sequence() {
                    new_sequence = true;
                    continue;
                }
                let Some(line) = row.line() else { continue };
                let index = row.file_index();
                let file = match file_ids.get(&index) {
                    Some(id) => *id,
                    None => {
                        let path = file_path(dwarf, &unit, header, index).unwrap_or_else(|| "<unknown>".into());
                        let next = ids.len() as u32;
                        let id = *ids.entry(path.clone()).or_insert_with(|| {
                            table.files.push(path);
                            next
                        });
                        file_ids.insert(index, id);
                        id
                    }
                };
                table.rows.push(Row {
                    address: row.address(),
                    file,
                    line: u32::try_from(line.get()).unwrap_or(u32::MAX),
                    is_stmt: row.is_stmt(),
                    starts_sequence: new_sequence,
                });
                new_sequence = false;
            }
        }
        Ok(table)
    }

    /// The source files, as full paths where the tables give their directories.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The one file that `name` names (a path, or its last components).
    pub fn find_file(&self, name: &str) -> Result<&str, LineError> {
        let found: Vec<&String> = self.files.iter().filter(|p| file_matches(p, name)).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => {
                let mut known: Vec<String> = self
                    .files
                    .iter()
                    .filter(|p| !p.starts_with("/usr/"))
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .take(8)
                    .collect();
                if known.is_empty() {
                    known = self.files.iter().take(8).cloned().collect();
                }
                Err(LineError::NoSuchFile { file: name.into(), known })
            }
            many => {
                Err(LineError::Ambiguous { file: name.into(), paths: many.iter().map(|p| p.to_string()).collect() })
            }
        }
    }

    fn file_id(&self, path: &str) -> Option<u32> {
        self.files.iter().position(|p| p == path).map(|i| i as u32)
    }

    /// The lines of file `path` that have code: a statement starts there.
    pub fn lines_with_code(&self, path: &str) -> BTreeSet<u32> {
        let Some(id) = self.file_id(path) else { return BTreeSet::new() };
        self.rows.iter().filter(|r| r.file == id && r.is_stmt).map(|r| r.line).collect()
    }

    /// Where line `line` of file `path` starts, once per copy of its code: each run of rows
    /// of that line in a sequence is a copy (the compiler duplicated the line, or inlined
    /// the function that holds it), and its first statement's address is where the line
    /// starts. Sorted, without duplicates; a line with no code is an error that names the
    /// nearest lines with code.
    pub fn line_addresses(&self, path: &str, line: u32) -> Result<Vec<u64>, LineError> {
        let no_code = || {
            let lines = self.lines_with_code(path);
            LineError::NoCode {
                file: path.rsplit('/').next().unwrap_or(path).into(),
                line,
                above: lines.range(..line).next_back().copied(),
                below: lines.range(line + 1..).next().copied(),
            }
        };
        let id = self.file_id(path).ok_or_else(no_code)?;
        let mut addresses = Vec::new();
        let mut in_run = false;
        let mut run_has_stmt = false;
        for r in &self.rows {
            let this_line = r.file == id && r.line == line;
            if r.starts_sequence || !this_line {
                in_run = false;
            }
            if !this_line {
                continue;
            }
            if !in_run {
                in_run = true;
                run_has_stmt = false;
            }
            if r.is_stmt && !run_has_stmt {
                run_has_stmt = true;
                addresses.push(r.address);
            }
        }
        addresses.sort_unstable();
        addresses.dedup();
        // Code the linker dropped keeps its rows at address 0.
        addresses.retain(|a| *a != 0);
        if addresses.is_empty() {
            return Err(no_code());
        }
        Ok(addresses)
    }

    /// The lines of file `path` whose code lies in `ranges` (a function's addresses).
    pub fn lines_in(&self, path: &str, ranges: &[std::ops::Range<u64>]) -> BTreeSet<u32> {
        let Some(id) = self.file_id(path) else { return BTreeSet::new() };
        self.rows
            .iter()
            .filter(|r| r.file == id && ranges.iter().any(|range| range.contains(&r.address)))
            .map(|r| r.line)
            .collect()
    }
}

/// The path of file `index` of a unit's line program: its directory (made absolute with
/// the unit's compilation directory) and its name.
pub(crate) fn file_path(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    header: &gimli::LineProgramHeader<Reader>,
    index: u64,
) -> Option<String> {
    let file = header.file(index)?;
    let text = |value| -> Option<String> {
        let r = dwarf.attr_string(unit, value).ok()?;
        Some(r.to_string_lossy().ok()?.into_owned())
    };
    let name = text(file.path_name())?;
    if name.starts_with('/') {
        return Some(name);
    }
    let mut path = String::new();
    if let Some(dir) = file.directory(header).and_then(text) {
        path = dir;
    }
    if !path.starts_with('/') {
        if let Some(comp_dir) = unit.comp_dir.as_ref().and_then(|d| d.to_string_lossy().ok()) {
            path = if path.is_empty() { comp_dir.into_owned() } else { format!("{comp_dir}/{path}") };
        }
    }
    Some(if path.is_empty() { name } else { format!("{}/{name}", path.trim_end_matches('/')) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_matched_by_name_or_path_suffix() {
        assert!(file_matches("/src/app/lines.c", "lines.c"));
        assert!(file_matches("/src/app/lines.c", "app/lines.c"));
        assert!(file_matches("/src/app/lines.c", "./lines.c"));
        assert!(file_matches("/src/app/lines.c", "/src/app/lines.c"));
        assert!(!file_matches("/src/app/lines.c", "ines.c"));
        assert!(!file_matches("/src/app/lines.c", "other/lines.c"));
    }

    fn table(rows: &[(u64, u32, bool, bool)]) -> LineTable {
        LineTable {
            files: vec!["/src/lines.c".into()],
            rows: rows
                .iter()
                .map(|&(address, line, is_stmt, starts_sequence)| Row {
                    address,
                    file: 0,
                    line,
                    is_stmt,
                    starts_sequence,
                })
                .collect(),
        }
    }

    #[test]
    fn each_run_of_a_line_is_one_site_at_its_first_statement() {
        // Line 15 twice (inlined twice), line 46 interleaved with 43 (the second run of 46
        // has no statement: it continues the first), and a copy of 15 in another sequence.
        let t = table(&[
            (0x10, 15, true, true),
            (0x10, 15, false, false),
            (0x18, 16, true, false),
            (0x20, 15, false, false),
            (0x24, 15, true, false),
            (0x30, 46, true, false),
            (0x30, 43, false, false),
            (0x34, 46, false, false),
            (0x40, 47, true, false),
            (0x50, 15, true, true),
        ]);
        assert_eq!(t.line_addresses("/src/lines.c", 15).unwrap(), vec![0x10, 0x24, 0x50]);
        assert_eq!(t.line_addresses("/src/lines.c", 46).unwrap(), vec![0x30]);
        let e = t.line_addresses("/src/lines.c", 44).unwrap_err();
        assert_eq!(e, LineError::NoCode { file: "lines.c".into(), line: 44, above: Some(16), below: Some(46) });
        assert_eq!(e.to_string(), "lines.c:44 has no code; the nearest lines with code are 16 (above) and 46 (below)");
        let e = t.line_addresses("/src/lines.c", 90).unwrap_err();
        assert_eq!(e.to_string(), "lines.c:90 has no code; the nearest line with code is 47 (above; none below)");
    }
}
