//! A function as the debug information knows it: where it was declared, its out-of-line
//! copies, and every copy the compiler inlined into a caller (`DW_TAG_inlined_subroutine`
//! whose `DW_AT_abstract_origin` leads to it), in every compilation unit.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use gimli::Reader as _;

use crate::copies::copy_entries;
use crate::debuginfo::Reader;
use crate::lines::{file_path, LineTable};

/// A copy of a function inlined into a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedCopy {
    /// Where the copy starts running: its `DW_AT_entry_pc`, else its first address; for one
    /// of several copies under one entry (an unrolled loop's passes), where that copy's
    /// first statement starts.
    pub entry: u64,
    /// Its code (several ranges when the compiler split it; the code of every copy under its
    /// entry).
    pub ranges: Vec<Range<u64>>,
}

/// What the debug information says of one function name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionInfo {
    /// The source file of its definition (a full path where the tables give it).
    pub decl_file: Option<String>,
    /// The line where its definition starts.
    pub decl_line: Option<u32>,
    /// The code of its out-of-line copies (none when every call was inlined).
    pub out_of_line: Vec<Range<u64>>,
    /// The entry of each out-of-line copy: more than one when files of the program each have
    /// their own (a `static` function of a header at -O0).
    pub out_of_line_entries: Vec<u64>,
    /// Its inlined copies elsewhere than in its own out-of-line code, by entry address.
    pub inlined: Vec<InlinedCopy>,
    /// The line where the next function defined in the same file starts, if one does.
    pub next_decl_line: Option<u32>,
}

impl FunctionInfo {
    /// All its code: out of line and inlined.
    pub fn code(&self) -> Vec<Range<u64>> {
        let mut all = self.out_of_line.clone();
        all.extend(self.inlined.iter().flat_map(|c| c.ranges.iter().cloned()));
        // Copies under one entry share its ranges.
        all.sort_by_key(|r| (r.start, r.end));
        all.dedup();
        all
    }

    /// Its source file and its first and last lines: from the line where its definition
    /// starts to the last line of its code, before the next function of the file (an
    /// inlined copy's addresses also hold some of its caller's lines).
    pub fn line_span(&self, table: &LineTable) -> Option<(&str, u32, u32)> {
        let (file, first) = (self.decl_file.as_deref()?, self.decl_line?);
        let before = self.next_decl_line.unwrap_or(u32::MAX);
        let last = table.lines_in(file, &self.code()).range(first..before).next_back().copied().unwrap_or(first);
        Some((file, first, last))
    }
}

/// One subprogram or inlined-subroutine entry of the function, read in full.
struct Die {
    inlined: bool,
    decl: Option<(String, u32)>,
    ranges: Vec<Range<u64>>,
    entry_pc: Option<u64>,
}

/// What the first pass keeps of every subprogram and inlined-subroutine entry: enough to
/// tell which are the function without reading the rest.
#[derive(Default)]
struct Index {
    /// Each entry's unit (by its place in `units`) and offset in it.
    place: HashMap<gimli::DebugInfoOffset, (usize, gimli::UnitOffset)>,
    /// The entries that have an origin, and that origin.
    origin: HashMap<gimli::DebugInfoOffset, gimli::DebugInfoOffset>,
    /// The entries named as asked, and the name (its index in the names asked for).
    named: HashMap<gimli::DebugInfoOffset, usize>,
    /// Those of them not `static`: with a `DW_AT_external`.
    external: HashSet<gimli::DebugInfoOffset>,
    /// For each unit, its named subprograms' `(DW_AT_decl_file, DW_AT_decl_line)`.
    decls: Vec<Vec<(u64, u64)>>,
}

/// The function `name` (its `DW_AT_name`, or its linkage name): `None` when the debug
/// information has no function of that name.
pub fn find_function(dwarf: &gimli::Dwarf<Reader>, name: &str) -> Result<Option<FunctionInfo>, gimli::Error> {
    Ok(find_functions(dwarf, &[name])?.remove(name))
}

/// The functions of these names, in one pass over the debug information (probes on many
/// functions of one binary read it once); a name it does not have is left out.
pub fn find_functions(
    dwarf: &gimli::Dwarf<Reader>,
    names: &[&str],
) -> Result<HashMap<String, FunctionInfo>, gimli::Error> {
    let wanted: HashMap<&[u8], usize> = names.iter().enumerate().map(|(i, n)| (n.as_bytes(), i)).collect();
    let (units, index) = index_units(dwarf, &wanted)?;
    // A function's entries: those of its name, and those whose origin chain leads to one
    // (a concrete copy of an inline function, an inlined copy, a C++ definition of a
    // declaration); a loop is cut. With the named entry the chain ends at.
    let whose = |mut at: gimli::DebugInfoOffset| {
        for _ in 0..8 {
            if let Some(i) = index.named.get(&at) {
                return Some((*i, at));
            }
            at = *index.origin.get(&at)?;
        }
        None
    };
    let named: Vec<(usize, gimli::DebugInfoOffset, gimli::DebugInfoOffset)> =
        index.place.keys().filter_map(|o| whose(*o).map(|(i, by)| (i, *o, by))).collect();
    // A name some entry gives linkage to (not `static`) is one function of the program, with
    // its copies wherever it was inlined (an `extern inline` of a header, glibc's `tolower`):
    // a `static` function of the same name in another file (glibc's `link` in
    // `unwind-resume.c`, beside the global `link`) is another function, and its copies are not
    // this one's. A name only `static` functions have is each of them (a header's `static`
    // function, copied into each file).
    let has_external: HashSet<usize> =
        named.iter().filter(|(_, _, by)| index.external.contains(by)).map(|(i, _, _)| *i).collect();
    let mut entries: Vec<(usize, gimli::DebugInfoOffset)> = named
        .into_iter()
        .filter(|(i, _, by)| !has_external.contains(i) || index.external.contains(by))
        .map(|(i, o, _)| (i, o))
        .collect();
    entries.sort_unstable();
    let mut found: HashMap<String, FunctionInfo> = HashMap::new();
    let mut decl_units: HashMap<usize, (usize, gimli::UnitOffset)> = HashMap::new();
    for (i, offset) in entries {
        let info = found.entry(names[i].to_owned()).or_default();
        let (u, at) = index.place[&offset];
        let unit = &units[u];
        let entry = unit.entry(at)?;
        let d = read_die(dwarf, unit, &entry, entry.tag() == gimli::DW_TAG_inlined_subroutine)?;
        if info.decl_line.is_none() {
            if let Some((file, line)) = &d.decl {
                info.decl_file = Some(file.clone());
                info.decl_line = Some(*line);
                decl_units.insert(i, (u, at));
            }
        }
        // Code the linker dropped keeps address 0.
        let ranges: Vec<Range<u64>> = d.ranges.iter().filter(|r| r.start != 0 && r.start < r.end).cloned().collect();
        let Some(first) = ranges.iter().map(|r| r.start).min() else { continue };
        if d.inlined {
            let entry = d.entry_pc.filter(|e| *e != 0).unwrap_or(first);
            // One entry may stand for several copies (the passes of an unrolled loop).
            for entry in copy_entries(unit, &ranges, entry)? {
                info.inlined.push(InlinedCopy { entry, ranges: ranges.clone() });
            }
        } else {
            let entry = d.entry_pc.filter(|e| *e != 0).unwrap_or(ranges[0].start);
            if !info.out_of_line_entries.contains(&entry) {
                info.out_of_line_entries.push(entry);
            }
            info.out_of_line.extend(ranges);
        }
    }
    for (i, (u, at)) in decl_units {
        let info = found.get_mut(names[i]).expect("found");
        // The next function of the same file, among those of the unit that declares it.
        let entry = units[u].entry(at)?;
        let first = u64::from(info.decl_line.unwrap_or(0));
        if let Some(file) = entry.attr_value(gimli::DW_AT_decl_file)?.and_then(|v| file_index(&v)) {
            info.next_decl_line = index.decls[u]
                .iter()
                .filter(|(f, line)| *f == file && *line > first)
                .map(|(_, line)| u32::try_from(*line).unwrap_or(u32::MAX))
                .min();
        }
    }
    for info in found.values_mut() {
        info.inlined.sort_by_key(|c| c.entry);
        info.inlined.dedup_by_key(|c| c.entry);
        info.out_of_line.sort_by_key(|r| r.start);
        info.out_of_line.dedup();
        // A copy inside the function's own out-of-line code is its body, which every call
        // reaches through the entry: gcc's partial inlining splits a function and inlines the
        // part back (77 of the 122 C library functions with inlined copies have one, `tolower`
        // and `sigismember` among them). A recursive call the compiler inlined into the
        // function itself looks the same, and is left out with them: its call is not counted.
        let own = &info.out_of_line;
        info.inlined.retain(|c| !own.iter().any(|r| r.contains(&c.entry)));
    }
    Ok(found)
}

fn file_index(v: &gimli::AttributeValue<Reader>) -> Option<u64> {
    match v {
        gimli::AttributeValue::FileIndex(i) => Some(*i),
        v => v.udata_value(),
    }
}

/// The first pass over every unit, in two halves side by side (the C library's debug
/// information has about 1,700 units: a tenth of a second's reading, at every start of a
/// trace that probes one of its functions).
fn index_units(
    dwarf: &gimli::Dwarf<Reader>,
    wanted: &HashMap<&[u8], usize>,
) -> Result<(Vec<gimli::Unit<Reader>>, Index), gimli::Error> {
    let mut headers = Vec::new();
    let mut all = dwarf.units();
    while let Some(header) = all.next()? {
        headers.push(header);
    }
    let half = headers.len().div_ceil(2);
    let pass = |headers: &[gimli::UnitHeader<Reader>], first: usize| {
        let mut units = Vec::with_capacity(headers.len());
        let mut index = Index::default();
        for header in headers {
            let unit = dwarf.unit(header.clone())?;
            index_unit(dwarf, &unit, first + units.len(), wanted, &mut index)?;
            units.push(unit);
        }
        Ok::<_, gimli::Error>((units, index))
    };
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| pass(&headers[half..], half));
        let first = pass(&headers[..half], 0);
        (first, second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let ((mut units, mut index), (more_units, more)) = (first?, second?);
    units.extend(more_units);
    index.place.extend(more.place);
    index.origin.extend(more.origin);
    index.named.extend(more.named);
    index.external.extend(more.external);
    index.decls.extend(more.decls);
    Ok((units, index))
}

/// The first pass over one unit: names compared in place, origins noted. The subtrees that
/// cannot hold a function are stepped over whole (through their `DW_AT_sibling`, without
/// reading their entries): in C, the members of its structures, unions and enumerations, most
/// of a unit's entries (the C library's units repeat the types of the headers they include).
fn index_unit(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    u: usize,
    wanted: &HashMap<&[u8], usize>,
    index: &mut Index,
) -> Result<(), gimli::Error> {
    let mut decls = Vec::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let c = is_c(root.entry())?;
    let mut walk = Walk { dwarf, unit, u, wanted, index, decls: &mut decls, c };
    walk.node(root)?;
    index.decls.push(decls);
    Ok(())
}

/// Whether a unit's root entry says it is C (whose types hold no functions).
fn is_c(root: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Result<bool, gimli::Error> {
    let c = [gimli::DW_LANG_C89, gimli::DW_LANG_C, gimli::DW_LANG_C99, gimli::DW_LANG_C11, gimli::DW_LANG_C17];
    Ok(matches!(root.attr_value(gimli::DW_AT_language)?, Some(gimli::AttributeValue::Language(l)) if c.contains(&l)))
}

/// Whether the children of an entry tagged `tag` can hold no function, in a unit of C (`c`)
/// or of any language (C++ and Rust put methods in their types).
fn holds_no_function(tag: gimli::DwTag, c: bool) -> bool {
    match tag {
        gimli::DW_TAG_array_type
        | gimli::DW_TAG_subroutine_type
        | gimli::DW_TAG_formal_parameter
        | gimli::DW_TAG_member
        | gimli::DW_TAG_enumerator => true,
        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_enumeration_type => c,
        _ => false,
    }
}

/// One unit's pass ([`index_unit`]).
struct Walk<'a> {
    dwarf: &'a gimli::Dwarf<Reader>,
    unit: &'a gimli::Unit<Reader>,
    u: usize,
    wanted: &'a HashMap<&'a [u8], usize>,
    index: &'a mut Index,
    decls: &'a mut Vec<(u64, u64)>,
    c: bool,
}

impl Walk<'_> {
    /// An entry and, unless they can hold no function, its children.
    fn node(&mut self, node: gimli::EntriesTreeNode<'_, '_, '_, Reader>) -> Result<(), gimli::Error> {
        let entry = node.entry();
        let tag = entry.tag();
        if matches!(tag, gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine) {
            self.function(entry)?;
        }
        if holds_no_function(tag, self.c) {
            return Ok(());
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            self.node(child)?;
        }
        Ok(())
    }

    /// A function's entry: its name, if wanted; its origin; its declaration's place.
    fn function(&mut self, entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Result<(), gimli::Error> {
        let (dwarf, unit) = (self.dwarf, self.unit);
        let Some(offset) = entry.offset().to_debug_info_offset(&unit.header) else { return Ok(()) };
        let (mut named, mut origin, mut decl_file, mut decl_line) = (None, None, None, None);
        let mut external = false;
        let mut attrs = entry.attrs();
        while let Some(attr) = attrs.next()? {
            match attr.name() {
                gimli::DW_AT_name | gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name if named.is_none() => {
                    if let Ok(s) = dwarf.attr_string(unit, attr.value()) {
                        named = s.to_slice().ok().and_then(|s| self.wanted.get(&*s).copied());
                    }
                }
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                    origin = match attr.value() {
                        gimli::AttributeValue::UnitRef(r) => r.to_debug_info_offset(&unit.header),
                        gimli::AttributeValue::DebugInfoRef(r) => Some(r),
                        _ => origin,
                    };
                }
                gimli::DW_AT_decl_file => decl_file = file_index(&attr.value()),
                gimli::DW_AT_decl_line => decl_line = attr.value().udata_value(),
                // Compilers leave it out for a `static` function; the assembler writes it
                // (as false, for glibc's system call wrappers, global or weak symbols).
                gimli::DW_AT_external => external = true,
                _ => {}
            }
        }
        let index = &mut *self.index;
        index.place.insert(offset, (self.u, entry.offset()));
        if let Some(o) = origin {
            index.origin.insert(offset, o);
        }
        if let Some(i) = named {
            index.named.insert(offset, i);
            if external {
                index.external.insert(offset);
            }
        }
        if let (Some(f), Some(l)) = (decl_file, decl_line) {
            self.decls.push((f, l));
        }
        Ok(())
    }
}

fn read_die(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
    inlined: bool,
) -> Result<Die, gimli::Error> {
    let decl_line = match entry.attr_value(gimli::DW_AT_decl_line)? {
        Some(v) => v.udata_value().and_then(|l| u32::try_from(l).ok()),
        None => None,
    };
    let decl_file = match entry.attr_value(gimli::DW_AT_decl_file)?.and_then(|v| file_index(&v)) {
        Some(i) => unit.line_program.as_ref().and_then(|p| file_path(dwarf, unit, p.header(), i)),
        None => None,
    };
    let mut ranges = Vec::new();
    let mut iter = dwarf.die_ranges(unit, entry)?;
    while let Some(r) = iter.next()? {
        ranges.push(r.begin..r.end);
    }
    let entry_pc = match entry.attr_value(gimli::DW_AT_entry_pc)? {
        Some(v @ (gimli::AttributeValue::Addr(_) | gimli::AttributeValue::DebugAddrIndex(_))) => {
            dwarf.attr_address(unit, v)?
        }
        // DWARF 5: an offset from the entry's first address.
        Some(v) => v.udata_value().and_then(|o| ranges.iter().map(|r| r.start).min().map(|s| s + o)),
        None => None,
    };
    Ok(Die { inlined, decl: decl_file.zip(decl_line), ranges, entry_pc })
}
