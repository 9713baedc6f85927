//! Variables outside any function: a file's statics and the program's globals, found by name
//! in a unit's top-level entries (C's file scope).

use crate::debuginfo::Reader;
use crate::scope::Var;
use crate::types::UnitCx;
use crate::VarError;

/// A file-scope variable of a unit.
pub(crate) struct Global {
    /// Its entry (the definition when the unit has one, else its declaration).
    pub var: Var,
    /// Visible from other files (`DW_AT_external`, on it or on the declaration it completes).
    pub external: bool,
    /// Defined here: it has a location or a constant value (an `extern` declaration has neither).
    pub defined: bool,
}

fn flag(e: &gimli::DebuggingInformationEntry<'_, '_, Reader>, at: gimli::DwAt) -> bool {
    matches!(e.attr_value(at), Ok(Some(gimli::AttributeValue::Flag(true))))
}

/// The file-scope variable `name` of the unit: its definition if the unit has one (gcc writes
/// a global as a declaration and then a definition that names it by `DW_AT_specification`).
pub(crate) fn global(cx: &UnitCx<'_>, name: &str) -> Result<Option<Global>, VarError> {
    let mut tree = cx.unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    let mut found: Option<Global> = None;
    while let Some(child) = children.next()? {
        let e = child.entry();
        if e.tag() != gimli::DW_TAG_variable || cx.name(e).as_deref() != Some(name) {
            continue;
        }
        let declared = cx.origin(e).and_then(|o| cx.entry(o).ok());
        let external = flag(e, gimli::DW_AT_external) || declared.is_some_and(|d| flag(&d, gimli::DW_AT_external));
        let defined =
            e.attr_value(gimli::DW_AT_location)?.is_some() || e.attr_value(gimli::DW_AT_const_value)?.is_some();
        let here = Global { var: Var { name: name.to_owned(), die: e.offset(), is_param: false }, external, defined };
        if defined {
            return Ok(Some(here));
        }
        found.get_or_insert(here);
    }
    Ok(found)
}
