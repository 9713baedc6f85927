//! C types as DWARF describes them, resolved one step at a time (a struct that points to
//! itself is never expanded further than a path asks).

use gimli::Reader as _;
use gimli::{AttributeValue, UnitOffset};

use crate::debuginfo::Reader;
use crate::VarError;

/// One DWARF unit and the sections, for reading its entries.
pub(crate) struct UnitCx<'a> {
    pub dwarf: &'a gimli::Dwarf<Reader>,
    pub unit: &'a gimli::Unit<Reader>,
}

/// A type with its qualifiers and typedefs removed.
#[derive(Debug, Clone)]
pub(crate) enum Type {
    /// An integer, `bool` or `char` (`encoding` is a `DW_ATE_*`).
    Base { name: String, size: u64, encoding: gimli::DwAte },
    /// A floating-point number (fetches have no type for it).
    Float { name: String },
    /// A pointer (`None`: `void *`).
    Pointer { to: Option<UnitOffset> },
    /// A struct, class or union with its members.
    Struct { size: u64, members: Vec<Member> },
    /// An array of `count` elements (`None`: unknown bound).
    Array { element: UnitOffset, count: Option<u64> },
    /// An enumeration.
    Enum { size: u64, signed: bool, enumerators: Vec<(i64, String)> },
    /// Anything else (functions, `void`).
    Other { name: String },
}

/// A struct member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub name: String,
    pub offset: u64,
    pub ty: UnitOffset,
    pub bit_field: bool,
}

impl UnitCx<'_> {
    pub(crate) fn entry(&self, at: UnitOffset) -> Result<gimli::DebuggingInformationEntry<'_, '_, Reader>, VarError> {
        Ok(self.unit.entry(at)?)
    }

    /// The entry's own name, or its abstract origin's / specification's.
    pub(crate) fn name(&self, entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Option<String> {
        if let Ok(Some(v)) = entry.attr_value(gimli::DW_AT_name) {
            let s = self.dwarf.attr_string(self.unit, v).ok()?;
            return Some(s.to_string_lossy().ok()?.into_owned());
        }
        let origin = self.origin(entry)?;
        let e = self.unit.entry(origin).ok()?;
        self.name(&e)
    }

    /// Where an entry's `DW_AT_abstract_origin` or `DW_AT_specification` points, in this unit.
    pub(crate) fn origin(&self, entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Option<UnitOffset> {
        for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
            if let Ok(Some(AttributeValue::UnitRef(o))) = entry.attr_value(at) {
                return Some(o);
            }
        }
        None
    }

    /// The entry's `DW_AT_type` (or its origin's).
    pub(crate) fn type_of(&self, entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>) -> Option<UnitOffset> {
        if let Ok(Some(AttributeValue::UnitRef(o))) = entry.attr_value(gimli::DW_AT_type) {
            return Some(o);
        }
        let e = self.unit.entry(self.origin(entry)?).ok()?;
        self.type_of(&e)
    }

    fn udata(entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>, at: gimli::DwAt) -> Option<u64> {
        entry.attr_value(at).ok()??.udata_value()
    }

    /// The type at `at`, typedefs and qualifiers removed; `None` is `void`.
    pub(crate) fn resolve(&self, at: Option<UnitOffset>) -> Result<Type, VarError> {
        let mut at = at;
        // Typedef chains are short; a loop guards against a malformed cycle.
        for _ in 0..64 {
            let Some(off) = at else { return Ok(Type::Other { name: "void".into() }) };
            let e = self.entry(off)?;
            let name = self.name(&e).unwrap_or_default();
            let size = Self::udata(&e, gimli::DW_AT_byte_size).unwrap_or(0);
            match e.tag() {
                gimli::DW_TAG_typedef
                | gimli::DW_TAG_const_type
                | gimli::DW_TAG_volatile_type
                | gimli::DW_TAG_restrict_type
                | gimli::DW_TAG_atomic_type => at = self.type_of(&e),
                gimli::DW_TAG_base_type => {
                    let encoding = match e.attr_value(gimli::DW_AT_encoding)? {
                        Some(AttributeValue::Encoding(enc)) => enc,
                        _ => gimli::DW_ATE_unsigned,
                    };
                    return Ok(match encoding {
                        gimli::DW_ATE_float | gimli::DW_ATE_complex_float | gimli::DW_ATE_decimal_float => {
                            Type::Float { name }
                        }
                        _ => Type::Base { name, size, encoding },
                    });
                }
                gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type | gimli::DW_TAG_rvalue_reference_type => {
                    return Ok(Type::Pointer { to: self.type_of(&e) })
                }
                gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type | gimli::DW_TAG_union_type => {
                    return Ok(Type::Struct { size, members: self.members(off)? });
                }
                gimli::DW_TAG_array_type => {
                    let element = self.type_of(&e).ok_or(VarError::Malformed("an array without a type"))?;
                    return Ok(Type::Array { element, count: self.array_count(off)? });
                }
                gimli::DW_TAG_enumeration_type => {
                    let (enumerators, signed) = self.enumerators(off)?;
                    return Ok(Type::Enum { size: size.max(1), signed, enumerators });
                }
                _ => return Ok(Type::Other { name }),
            }
        }
        Err(VarError::Malformed("a typedef cycle"))
    }

    fn children(&self, at: UnitOffset) -> Result<Vec<UnitOffset>, VarError> {
        let mut tree = self.unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let mut out = Vec::new();
        let mut children = root.children();
        while let Some(child) = children.next()? {
            out.push(child.entry().offset());
        }
        Ok(out)
    }

    fn members(&self, at: UnitOffset) -> Result<Vec<Member>, VarError> {
        let mut out = Vec::new();
        for child in self.children(at)? {
            let e = self.entry(child)?;
            if e.tag() != gimli::DW_TAG_member {
                continue;
            }
            let bit_field = e.attr_value(gimli::DW_AT_bit_size)?.is_some();
            let offset = match e.attr_value(gimli::DW_AT_data_member_location)? {
                Some(v) => v.udata_value().unwrap_or(0),
                None => Self::udata(&e, gimli::DW_AT_data_bit_offset).unwrap_or(0) / 8,
            };
            let Some(ty) = self.type_of(&e) else { continue };
            // An anonymous struct or union member's own members are reached by their names.
            match self.name(&e) {
                Some(name) => out.push(Member { name, offset, ty, bit_field }),
                None => {
                    if let Type::Struct { members, .. } = self.resolve(Some(ty))? {
                        out.extend(members.into_iter().map(|m| Member { offset: offset + m.offset, ..m }));
                    }
                }
            }
        }
        Ok(out)
    }

    fn array_count(&self, at: UnitOffset) -> Result<Option<u64>, VarError> {
        for child in self.children(at)? {
            let e = self.entry(child)?;
            if e.tag() != gimli::DW_TAG_subrange_type {
                continue;
            }
            if let Some(n) = Self::udata(&e, gimli::DW_AT_count) {
                return Ok(Some(n));
            }
            return Ok(Self::udata(&e, gimli::DW_AT_upper_bound).map(|u| u + 1));
        }
        Ok(None)
    }

    fn enumerators(&self, at: UnitOffset) -> Result<(Vec<(i64, String)>, bool), VarError> {
        let mut out = Vec::new();
        let mut signed = false;
        for child in self.children(at)? {
            let e = self.entry(child)?;
            if e.tag() != gimli::DW_TAG_enumerator {
                continue;
            }
            let value = match e.attr_value(gimli::DW_AT_const_value)? {
                Some(AttributeValue::Sdata(v)) => {
                    signed |= v < 0;
                    v
                }
                Some(v) => v.udata_value().unwrap_or(0) as i64,
                None => continue,
            };
            out.push((value, self.name(&e).unwrap_or_default()));
        }
        Ok((out, signed))
    }

    /// A C spelling of the type at `at`, for messages and `dprobe list --args`.
    pub(crate) fn spell(&self, at: Option<UnitOffset>) -> String {
        self.spell_depth(at, 0)
    }

    fn spell_depth(&self, at: Option<UnitOffset>, depth: u32) -> String {
        let Some(off) = at else { return "void".into() };
        let Ok(e) = self.entry(off) else { return "?".into() };
        if depth > 16 {
            return "...".into();
        }
        let inner = || self.spell_depth(self.type_of(&e), depth + 1);
        let name = self.name(&e);
        match e.tag() {
            gimli::DW_TAG_pointer_type => format!("{} *", inner()),
            gimli::DW_TAG_reference_type => format!("{} &", inner()),
            gimli::DW_TAG_const_type => format!("const {}", inner()),
            gimli::DW_TAG_volatile_type => format!("volatile {}", inner()),
            gimli::DW_TAG_restrict_type => inner(),
            gimli::DW_TAG_structure_type => format!("struct {}", name.unwrap_or_else(|| "(anonymous)".into())),
            gimli::DW_TAG_union_type => format!("union {}", name.unwrap_or_else(|| "(anonymous)".into())),
            gimli::DW_TAG_enumeration_type => format!("enum {}", name.unwrap_or_else(|| "(anonymous)".into())),
            gimli::DW_TAG_array_type => {
                let n = self.array_count(off).ok().flatten().map(|n| n.to_string()).unwrap_or_default();
                format!("{}[{n}]", inner())
            }
            gimli::DW_TAG_subroutine_type => "function".into(),
            _ => name.unwrap_or_else(|| "?".into()),
        }
    }
}
