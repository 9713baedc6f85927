//! Variables by name: `req`, `req->hdr.len`, `argv[1]`, `$params` at a probe address,
//! turned into the fetch arguments every engine evaluates (registers, `+OFF(%sp)`, chains of
//! dereferences), typed from their C types.

use dprobe_spec::{ArgType, Fetch, Register};

use crate::debuginfo::DebugInfo;
use crate::globals::global;
use crate::location::{frame_base, locate, Located, Piece, Place};
use crate::scope::{Function, Var};
use crate::types::{Type, UnitCx};
use crate::VarError;

/// How a fetched integer is shown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Shown {
    /// As its type says (decimal, hexadecimal, string).
    #[default]
    Plain,
    /// `true` / `false`.
    Bool,
    /// By its enumerator's name (the number when none has it).
    Enum(Vec<(i64, String)>),
}

/// What the user asked for: a path (`req->hdr.len`, `argv[1]`, `$params`), the name to print
/// it under, and a type that overrides the DWARF's (`name:TYPE`).
#[derive(Debug, Clone)]
pub struct Request {
    /// `req`, `req->hdr.len`, `argv[1]`, `$params`.
    pub path: String,
    /// The name it is printed under.
    pub name: String,
    /// `:TYPE` given by the user.
    pub ty: Option<ArgType>,
}

/// A variable made a fetch argument.
#[derive(Debug, Clone)]
pub struct VarFetch {
    /// The name it is printed under.
    pub name: String,
    /// How to fetch it.
    pub fetch: Fetch,
    /// Its width, sign, or string.
    pub ty: ArgType,
    /// How to show it.
    pub shown: Shown,
}

/// A probe's place and fetches.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Bytes from the function's entry where the probe goes (moved past the prologue when the
    /// variables are in stack slots the prologue fills).
    pub offset: u64,
    /// The fetches, in the order asked (`$params` expanded).
    pub args: Vec<VarFetch>,
    /// Parameters `$params` left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// An l-value: where something is.
enum Lv {
    Reg(&'static str),
    Mem {
        base: Fetch,
        offset: i64,
    },
    /// `offset` bytes into a static the compiler split into pieces (clang keeps only the
    /// elements of a global array the program uses): which piece holds it is known once the
    /// size read there is ([`Resolver::settle`]).
    Pieces {
        pieces: Vec<Piece>,
        offset: i64,
    },
    /// `offset` bytes into the probed file, as `@+OFFSET` reckons (a static, at a return).
    File {
        offset: i64,
    },
}

/// How a probe reaches a static variable of its binary.
#[derive(Debug, Clone, Copy)]
enum Statics {
    /// From `%ip`, the probe's own address (at a function's entry or inside it).
    FromIp,
    /// Through where the probed file is (`@+OFFSET`): at a return, `%ip` is not the probe's
    /// own address. `delta`: the probed code's link-time address minus its file offset.
    InFile { delta: u64 },
}

impl Lv {
    /// `by` bytes further into memory (a member, an element).
    fn shift(self, by: i64) -> Lv {
        match self {
            Lv::Mem { base, offset } => Lv::Mem { base, offset: offset + by },
            Lv::Pieces { pieces, offset } => Lv::Pieces { pieces, offset: offset + by },
            Lv::File { offset } => Lv::File { offset: offset + by },
            Lv::Reg(_) => unreachable!("only memory has members and elements"),
        }
    }

    /// Its value (up to 8 bytes).
    fn value(&self) -> Fetch {
        match self {
            Lv::Reg(r) => Fetch::Reg(Register(r)),
            Lv::Mem { base, offset } => Fetch::Deref { offset: *offset, inner: Box::new(base.clone()) },
            Lv::File { offset } => Fetch::FileOffset(*offset as u64),
            Lv::Pieces { .. } => unreachable!("a piece is settled before its value is read"),
        }
    }

    /// Its address, as a string's is read (`None` for a register).
    fn address(&self) -> Option<Fetch> {
        match self {
            Lv::Mem { base, offset } => Some(Fetch::Deref { offset: *offset, inner: Box::new(base.clone()) }),
            Lv::File { offset } => Some(Fetch::FileOffset(*offset as u64)),
            Lv::Reg(_) | Lv::Pieces { .. } => None,
        }
    }
}

/// How far link-time address `address` is from the probe at `pc`. Every engine gives `%ip` as
/// the probe's own run-time address, and the binary moves as one piece (PIE, shared
/// libraries), so `%ip` plus this is where the variable is in the process.
fn from_ip(address: u64, pc: u64) -> i64 {
    address.wrapping_sub(pc) as i64
}

/// A step of a path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Arrow(&'a str),
    Dot(&'a str),
    Index(u64),
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `*...root(->m|.m|[N])*`: how many `*` lead it (each reads what the rest points to), the
/// root, and the steps.
fn parse_path(whole: &str) -> Result<(usize, &str, Vec<Step<'_>>), VarError> {
    let bad = |why: &str| VarError::BadPath { path: whole.into(), reason: why.into() };
    let path = whole.trim_start_matches('*');
    let derefs = whole.len() - path.len();
    let end = path.find(['-', '.', '[']).unwrap_or(path.len());
    let root = &path[..end];
    if !is_ident(root) {
        return Err(bad("a variable name first (letters, digits and _)"));
    }
    let mut steps = Vec::new();
    let mut rest = &path[end..];
    while !rest.is_empty() {
        let (kind, after) = if let Some(r) = rest.strip_prefix("->") {
            (0, r)
        } else if let Some(r) = rest.strip_prefix('.') {
            (1, r)
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']').ok_or_else(|| bad("a closing ]"))?;
            let n = r[..close].parse().map_err(|_| bad("a number inside [ ]"))?;
            steps.push(Step::Index(n));
            rest = &r[close + 1..];
            continue;
        } else {
            return Err(bad("->MEMBER, .MEMBER or [N] after a name"));
        };
        let end = after.find(['-', '.', '[']).unwrap_or(after.len());
        let member = &after[..end];
        if !is_ident(member) {
            return Err(bad("a member name after -> or ."));
        }
        steps.push(if kind == 0 { Step::Arrow(member) } else { Step::Dot(member) });
        rest = &after[end..];
    }
    Ok((derefs, root, steps))
}

/// Integer fetch type of `size` bytes.
fn int_type(size: u64, signed: bool) -> Option<ArgType> {
    let bits = match size {
        1 => 8,
        2 => 16,
        4 => 32,
        8 => 64,
        _ => return None,
    };
    Some(if signed { ArgType::S(bits) } else { ArgType::U(bits) })
}

/// `a struct header`, `an int`.
fn a(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {type_name}")
}

fn is_char(t: &Type) -> bool {
    matches!(t, Type::Base { size: 1, encoding, .. }
        if matches!(*encoding, gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char | gimli::DW_ATE_UTF))
}

struct Resolver<'a> {
    info: &'a DebugInfo,
    function: &'a Function,
    cx: UnitCx<'a>,
    pc: u64,
    vars: Vec<Var>,
    statics: Statics,
}

impl Resolver<'_> {
    /// Where `p` is, seen from the probe.
    fn lv(&self, p: Place) -> Lv {
        match p {
            Place::Register(r) => Lv::Reg(r),
            Place::Memory { base, offset } => Lv::Mem { base, offset },
            Place::Static(address) => self.static_at(address),
            Place::StaticPieces(pieces) => Lv::Pieces { pieces, offset: 0 },
        }
    }

    /// The static at link-time address `address`.
    fn static_at(&self, address: u64) -> Lv {
        match self.statics {
            Statics::FromIp => Lv::Mem { base: Fetch::Reg(Register("ip")), offset: from_ip(address, self.pc) },
            Statics::InFile { delta } => Lv::File { offset: address.wrapping_sub(delta) as i64 },
        }
    }

    fn frame_base(&self) -> Result<crate::location::Base, String> {
        let e = self.cx.entry(self.function.die).map_err(|e| e.to_string())?;
        let attr = e.attr_value(gimli::DW_AT_frame_base).map_err(|e| e.to_string())?;
        frame_base(self.info, &self.cx, attr, self.pc, self.pc == self.function.low_pc)
    }

    fn known(&self) -> Vec<String> {
        self.vars.iter().map(|v| v.name.clone()).collect()
    }

    /// Where `var` is at the probe address, or why it cannot be read.
    fn place(&self, var: &Var) -> Result<Place, VarError> {
        let e = self.cx.entry(var.die)?;
        let (located, _) = locate(&self.cx, &e, self.pc, &|| self.frame_base())?;
        match located {
            Located::At(p) => Ok(p),
            Located::Refused(reason) => Err(VarError::Unfetchable { path: var.name.clone(), reason }),
            Located::Missing(ranges) => {
                Err(VarError::OptimizedOut { name: var.name.clone(), available: self.describe_ranges(&ranges)? })
            }
        }
    }

    fn describe_ranges(&self, ranges: &[(u64, u64)]) -> Result<Option<String>, VarError> {
        if ranges.is_empty() {
            return Ok(None);
        }
        let rows = self.function.line_rows()?;
        let line_at = |a: u64| rows.iter().take_while(|(ra, _)| *ra <= a).last().map(|r| r.1);
        let mut lines: Vec<(u64, u64)> = Vec::new();
        for &(b, e) in ranges {
            match (line_at(b), line_at(e.saturating_sub(1))) {
                (Some(x), Some(y)) => lines.push((x.min(y), x.max(y))),
                _ => {
                    let text = ranges.iter().map(|(b, e)| format!("{b:#x}-{e:#x}")).collect::<Vec<_>>().join(", ");
                    return Ok(Some(format!("addresses {text}")));
                }
            }
        }
        lines.sort_unstable();
        // Ranges that overlap or touch are one span of lines.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in lines {
            match merged.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let lines = merged;
        let text = lines
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Some(format!("line{} {text}", if lines.len() == 1 && lines[0].0 == lines[0].1 { "" } else { "s" })))
    }

    fn lookup(&self, name: &str) -> Result<&Var, VarError> {
        self.vars.iter().find(|v| v.name == name).ok_or_else(|| VarError::UnknownVariable {
            name: name.into(),
            function: self.function.name.clone(),
            known: self.known(),
        })
    }

    /// The fetch for `request`.
    fn resolve(&self, request: &Request) -> Result<VarFetch, VarError> {
        let (derefs, root, steps) = parse_path(&request.path)?;
        let unknown = match self.lookup(root) {
            Ok(var) => {
                let is_static = matches!(self.place(var), Ok(Place::Static(_) | Place::StaticPieces(_)));
                if matches!(self.statics, Statics::InFile { .. }) && !is_static {
                    let what = if var.is_param { "a parameter" } else { "a local variable" };
                    return Err(VarError::Unfetchable {
                        path: request.path.clone(),
                        reason: format!(
                            "`{root}` is {what} of `{}`, gone at %return; only globals and statics are read there \
                             (fetch `{root}` with an entry probe)",
                            self.function.name
                        ),
                    });
                }
                return self.resolve_var(request, var, derefs, &steps);
            }
            Err(e) => e,
        };
        // Not a parameter or local: a static of the function's file, or a global, as C sees it.
        let here = global(&self.cx, root)?;
        if let Some(g) = here.as_ref().filter(|g| g.defined) {
            return self.resolve_var(request, &g.var, derefs, &steps);
        }
        let dwarf = self.info.dwarf();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            if unit.header.offset() == self.cx.unit.header.offset() {
                continue;
            }
            let cx = UnitCx { dwarf, unit: &unit };
            if let Some(g) = global(&cx, root)?.filter(|g| g.defined && g.external) {
                let there = Resolver {
                    info: self.info,
                    function: self.function,
                    cx,
                    pc: self.pc,
                    vars: Vec::new(),
                    statics: self.statics,
                };
                return there.resolve_var(request, &g.var, derefs, &steps);
            }
        }
        match here {
            // Declared here, defined nowhere with a location: optimized out.
            Some(g) => self.resolve_var(request, &g.var, derefs, &steps),
            None => Err(unknown),
        }
    }

    /// The fetch for `request`, whose root is the variable `var`.
    fn resolve_var(
        &self,
        request: &Request,
        var: &Var,
        derefs: usize,
        steps: &[Step<'_>],
    ) -> Result<VarFetch, VarError> {
        let path = request.path.as_str();
        let root = var.name.as_str();
        let mut lv = self.lv(self.place(var)?);
        let e = self.cx.entry(var.die)?;
        let mut ty_at = self.cx.type_of(&e);
        let mut spelled = root.to_owned();
        let unfetchable = |why: String| VarError::Unfetchable { path: path.into(), reason: why };
        for step in steps {
            let ty = self.cx.resolve(ty_at)?;
            let type_name = self.cx.spell(ty_at);
            match step {
                Step::Arrow(m) | Step::Dot(m) => {
                    let arrow = matches!(step, Step::Arrow(_));
                    let (struct_ty, base_lv) = match (&ty, arrow) {
                        (Type::Pointer { to }, true) => {
                            (self.cx.resolve(*to)?, Lv::Mem { base: self.settle(lv, 8, &spelled)?.value(), offset: 0 })
                        }
                        (Type::Struct { .. }, false) => match lv {
                            Lv::Mem { .. } | Lv::Pieces { .. } | Lv::File { .. } => (ty.clone(), lv),
                            Lv::Reg(r) => {
                                return Err(unfetchable(format!(
                                    "`{spelled}` is held in %{r} here; members of a struct in a register cannot be read"
                                )))
                            }
                        },
                        (Type::Struct { .. }, true) => {
                            return Err(unfetchable(format!(
                                "`{spelled}` is {}, not a pointer: use `.`",
                                a(&type_name)
                            )))
                        }
                        (Type::Pointer { .. }, false) => {
                            return Err(unfetchable(format!("`{spelled}` is a pointer ({type_name}): use `->`")))
                        }
                        _ => {
                            return Err(unfetchable(format!("`{spelled}` is {}, which has no members", a(&type_name))))
                        }
                    };
                    let Type::Struct { members, .. } = &struct_ty else {
                        return Err(unfetchable(format!("`{spelled}` does not point to a struct ({type_name})")));
                    };
                    let Some(member) = members.iter().find(|x| x.name == *m) else {
                        return Err(VarError::NoMember {
                            path: path.into(),
                            member: (*m).into(),
                            type_name: if arrow { type_name.trim_end_matches(" *").to_owned() } else { type_name },
                            known: members.iter().map(|x| x.name.clone()).collect(),
                        });
                    };
                    if member.bit_field {
                        return Err(unfetchable(format!("`{m}` is a bit-field")));
                    }
                    lv = base_lv.shift(member.offset as i64);
                    ty_at = Some(member.ty);
                    spelled = format!("{spelled}{}{m}", if arrow { "->" } else { "." });
                }
                Step::Index(i) => {
                    let (element, base_lv) = match &ty {
                        Type::Pointer { to: Some(to) } => {
                            (*to, Lv::Mem { base: self.settle(lv, 8, &spelled)?.value(), offset: 0 })
                        }
                        Type::Array { element, count } => {
                            if count.is_some_and(|c| *i >= c) {
                                return Err(unfetchable(format!(
                                    "`{spelled}` has {} elements",
                                    count.unwrap_or_default()
                                )));
                            }
                            match lv {
                                Lv::Mem { .. } | Lv::Pieces { .. } | Lv::File { .. } => (*element, lv),
                                Lv::Reg(r) => {
                                    return Err(unfetchable(format!("`{spelled}` is held in %{r} here")));
                                }
                            }
                        }
                        _ => {
                            return Err(unfetchable(format!(
                                "`{spelled}` is {}, which cannot be indexed",
                                a(&type_name)
                            )))
                        }
                    };
                    let size = self.size_of(Some(element))?;
                    lv = base_lv.shift((*i * size) as i64);
                    ty_at = Some(element);
                    spelled = format!("{spelled}[{i}]");
                }
            }
        }
        for _ in 0..derefs {
            (lv, ty_at) = self.deref(lv, ty_at, &spelled, path, request.ty.is_some())?;
            spelled = format!("*{spelled}");
        }
        self.finish(request, lv, ty_at)
    }

    /// `*spelled`, as C reads it: what a pointer points to, or an array's first element. A
    /// `void *` is read only with a given type (`*p:u32`).
    fn deref(
        &self,
        lv: Lv,
        ty_at: Option<gimli::UnitOffset>,
        spelled: &str,
        path: &str,
        typed: bool,
    ) -> Result<(Lv, Option<gimli::UnitOffset>), VarError> {
        let unfetchable = |why: String| VarError::Unfetchable { path: path.into(), reason: why };
        match self.cx.resolve(ty_at)? {
            Type::Pointer { to: None } if !typed => Err(unfetchable(format!(
                "`{spelled}` is a void pointer: give the type to read at it (`*{spelled}:u64`)"
            ))),
            Type::Pointer { to } => Ok((Lv::Mem { base: self.settle(lv, 8, spelled)?.value(), offset: 0 }, to)),
            Type::Array { element, .. } => match lv {
                Lv::Mem { .. } | Lv::Pieces { .. } | Lv::File { .. } => Ok((lv, Some(element))),
                Lv::Reg(r) => Err(unfetchable(format!("`{spelled}` is held in %{r} here"))),
            },
            _ => Err(unfetchable(format!(
                "`{spelled}` is {}, not a pointer: `*` reads what a pointer points to",
                a(&self.cx.spell(ty_at))
            ))),
        }
    }

    /// Where `size` bytes of a split static are (`spelled` names them): in the piece that holds
    /// them all, or optimized out when no piece does.
    fn settle(&self, lv: Lv, size: u64, spelled: &str) -> Result<Lv, VarError> {
        let Lv::Pieces { pieces, offset } = lv else { return Ok(lv) };
        let kept = |p: &&Piece| p.address.is_some();
        let holder = pieces
            .iter()
            .filter(kept)
            .find(|p| p.start as i64 <= offset && offset + size as i64 <= (p.start + p.size) as i64);
        match holder.and_then(|p| Some((p.address? + (offset as u64 - p.start), p))) {
            Some((address, _)) => Ok(self.static_at(address)),
            None => {
                let kept: Vec<String> =
                    pieces.iter().filter(kept).map(|p| format!("{}-{}", p.start, p.start + p.size - 1)).collect();
                Err(VarError::Unfetchable {
                    path: spelled.into(),
                    reason: format!(
                        "the compiler kept only bytes {} of the variable in memory (it split it in pieces); these \
                         bytes are optimized out",
                        if kept.is_empty() { "none".into() } else { kept.join(", ") }
                    ),
                })
            }
        }
    }

    fn size_of(&self, at: Option<gimli::UnitOffset>) -> Result<u64, VarError> {
        Ok(match self.cx.resolve(at)? {
            Type::Base { size, .. } | Type::Struct { size, .. } | Type::Enum { size, .. } => size,
            Type::Pointer { .. } => 8,
            Type::Array { element, count } => self.size_of(Some(element))? * count.unwrap_or(0),
            Type::Float { name } => match name.as_str() {
                "float" => 4,
                "long double" => 16,
                _ => 8,
            },
            Type::Other { name } => {
                return Err(VarError::Malformed(if name == "void" { "void" } else { "an unsized type" }))
            }
        })
    }

    /// The fetch of a value of type `ty_at` at `lv`.
    fn finish(&self, request: &Request, lv: Lv, ty_at: Option<gimli::UnitOffset>) -> Result<VarFetch, VarError> {
        let path = request.path.as_str();
        let lv = match lv {
            Lv::Pieces { .. } => self.settle(lv, self.size_of(ty_at)?, path)?,
            lv => lv,
        };
        let ty = self.cx.resolve(ty_at)?;
        let type_name = self.cx.spell(ty_at);
        let done = |fetch, ty, shown| Ok(VarFetch { name: request.name.clone(), fetch, ty, shown });
        let unfetchable = |why: String| VarError::Unfetchable { path: path.into(), reason: why };
        // A string is read at its address: a `char *`'s value, or a `char[]`'s place.
        let string_at = |lv: &Lv, is_array: bool| -> Result<Fetch, VarError> {
            match (lv, is_array) {
                (_, false) => Ok(Fetch::Deref { offset: 0, inner: Box::new(lv.value()) }),
                (Lv::Reg(r), true) => Err(unfetchable(format!("the array is held in %{r} here"))),
                (Lv::Pieces { .. }, true) => Err(unfetchable("the compiler split the array in pieces".into())),
                (lv, true) => Ok(lv.address().expect("memory")),
            }
        };
        if let Some(given) = request.ty {
            let is_array = matches!(ty, Type::Array { .. });
            let fetch = match given {
                ArgType::String => string_at(&lv, is_array)?,
                _ => match (&ty, lv.address()) {
                    (Type::Struct { .. } | Type::Array { .. }, Some(address)) => address,
                    _ => lv.value(),
                },
            };
            return done(fetch, given, Shown::Plain);
        }
        match ty {
            Type::Base { size, encoding, name } => {
                let signed = matches!(encoding, gimli::DW_ATE_signed | gimli::DW_ATE_signed_char);
                let arg = int_type(size, signed)
                    .ok_or_else(|| unfetchable(format!("`{name}` is {size} bytes wide; fetches are 1, 2, 4 or 8")))?;
                let shown = if encoding == gimli::DW_ATE_boolean { Shown::Bool } else { Shown::Plain };
                done(lv.value(), arg, shown)
            }
            Type::Enum { size, signed, enumerators, .. } => {
                let arg = int_type(size, signed).ok_or_else(|| unfetchable(format!("an enum of {size} bytes")))?;
                done(lv.value(), arg, Shown::Enum(enumerators))
            }
            Type::Pointer { to } => {
                if is_char(&self.cx.resolve(to)?) {
                    done(string_at(&lv, false)?, ArgType::String, Shown::Plain)
                } else {
                    done(lv.value(), ArgType::X(64), Shown::Plain)
                }
            }
            Type::Array { element, .. } if is_char(&self.cx.resolve(Some(element))?) => {
                done(string_at(&lv, true)?, ArgType::String, Shown::Plain)
            }
            Type::Array { .. } => {
                Err(unfetchable(format!("`{path}` is an array ({type_name}); name an element: {path}[0]")))
            }
            Type::Struct { members, .. } => {
                let names: Vec<String> = members.iter().take(6).map(|m| m.name.clone()).collect();
                let examples = names.iter().map(|m| format!("{path}.{m}")).collect::<Vec<_>>().join(", ");
                Err(unfetchable(format!("`{path}` is {}; name a member: {examples}", a(&type_name))))
            }
            Type::Float { name } => {
                Err(unfetchable(format!("`{path}` is {}; floating-point values are not fetched", a(&name))))
            }
            Type::Other { name } => Err(unfetchable(format!("`{path}` is of type {name}"))),
        }
    }
}

/// Where a probe on `function` (`offset` bytes in; `None`: the function's entry, moved past
/// the prologue when the variables need it) goes and what it fetches for `requests`.
pub fn place_vars(
    info: &DebugInfo,
    function: &str,
    offset: Option<u64>,
    requests: &[Request],
) -> Result<Placed, VarError> {
    let f = info.function(function)?.ok_or_else(|| VarError::NoFunction { name: function.into() })?;
    place_vars_in(info, &f, offset, requests)
}

/// [`place_vars`] in the function `f` (one found by [`DebugInfo::function_at`]); `offset` wraps
/// for an address in a part of its code below its entry.
pub fn place_vars_in(
    info: &DebugInfo,
    f: &crate::Function,
    offset: Option<u64>,
    requests: &[Request],
) -> Result<Placed, VarError> {
    let at = |pc: u64| -> Result<Resolver<'_>, VarError> {
        let cx = f.cx(info);
        let vars = f.vars_at(info, pc)?;
        Ok(Resolver { info, function: f, cx, pc, vars, statics: Statics::FromIp })
    };
    let offset = match offset {
        Some(o) => o,
        None => {
            // At the entry, parameters are where the caller put them; an -O0 function copies
            // them to stack slots in its prologue, and its DWARF names only those slots (a
            // single location, not a list): then the probe goes after the prologue.
            let r = at(f.low_pc)?;
            let mut needs_body = false;
            for var in r.vars.iter().filter(|v| v.is_param || requests.iter().any(|q| root_of(&q.path) == v.name)) {
                let e = r.cx.entry(var.die)?;
                let (located, from_list) = locate(&r.cx, &e, f.low_pc, &|| r.frame_base())?;
                let in_frame = matches!(&located, Located::At(Place::Memory { .. }));
                // A function's own static is in place from the start.
                let is_static = matches!(&located, Located::At(Place::Static(_) | Place::StaticPieces(_)));
                if !from_list && !is_static && (in_frame || !var.is_param) {
                    needs_body = true;
                }
            }
            if needs_body {
                f.after_prologue()? - f.low_pc
            } else {
                0
            }
        }
    };
    let r = at(f.low_pc.wrapping_add(offset))?;
    let mut args = Vec::new();
    let mut skipped = Vec::new();
    for q in requests {
        if q.path == "$params" {
            for p in r.vars.iter().filter(|v| v.is_param) {
                let one = Request { path: p.name.clone(), name: p.name.clone(), ty: None };
                match r.resolve(&one) {
                    Ok(a) => args.push(a),
                    Err(e) => skipped.push((p.name.clone(), e.to_string())),
                }
            }
            continue;
        }
        args.push(r.resolve(q)?);
    }
    Ok(Placed { offset, args, skipped })
}

/// What a return probe on `function` fetches for `requests`: only globals and statics (a
/// function's own `static` included), read through where the probed file is (`@+OFFSET`,
/// the same at the function's every exit and in every engine); its parameters and locals are
/// gone, and refused with the reason. `delta`: the function's link-time address minus its
/// offset in its file.
pub fn place_vars_at_return(
    info: &DebugInfo,
    function: &str,
    delta: u64,
    requests: &[Request],
) -> Result<Vec<VarFetch>, VarError> {
    let f = info.function(function)?.ok_or_else(|| VarError::NoFunction { name: function.into() })?;
    let pc = f.low_pc;
    let r = Resolver {
        info,
        function: &f,
        cx: f.cx(info),
        pc,
        vars: f.vars_at(info, pc)?,
        statics: Statics::InFile { delta },
    };
    requests
        .iter()
        .map(|q| {
            if q.path == "$params" {
                return Err(VarError::Unfetchable {
                    path: q.path.clone(),
                    reason: format!(
                        "the parameters of `{function}` are gone at %return; fetch them with an entry probe"
                    ),
                });
            }
            r.resolve(q)
        })
        .collect()
}

fn root_of(path: &str) -> &str {
    let path = path.trim_start_matches('*');
    &path[..path.find(['-', '.', '[']).unwrap_or(path.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_step_by_step() {
        let (derefs, root, steps) = parse_path("req->hdr.len").unwrap();
        assert_eq!((derefs, root), (0, "req"));
        assert_eq!(steps, [Step::Arrow("hdr"), Step::Dot("len")]);
        let (derefs, root, steps) = parse_path("argv[1]").unwrap();
        assert_eq!((derefs, root, steps), (0, "argv", vec![Step::Index(1)]));
        assert_eq!(parse_path("**argv").unwrap(), (2, "argv", vec![]));
        assert_eq!(parse_path("*req->path").unwrap(), (1, "req", vec![Step::Arrow("path")]));
        for bad in ["1x", "a->", "a[", "a[x]", "a..b", "a-b", "*", "a*b"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }
}

/// A fetch in the kernel's fetch-argument syntax (`%di`, `-20(%bp)`, `+8(+0(%di))`), for
/// `dprobe list --args` and messages.
pub fn fetch_text(f: &Fetch) -> String {
    match f {
        Fetch::Reg(r) => format!("%{}", r.0),
        Fetch::Deref { offset, inner } => {
            let sign = if *offset < 0 { "-" } else { "+" };
            format!("{sign}{}({})", offset.unsigned_abs(), fetch_text(inner))
        }
        Fetch::Arg(n) => format!("$arg{n}"),
        Fetch::Memory(a) => format!("@{a:#x}"),
        Fetch::FileOffset(o) => format!("@+{o:#x}"),
        Fetch::Immediate(i) => format!("\\{i}"),
        Fetch::Stack(n) => format!("$stack{n}"),
        Fetch::StackPointer => "$stack".into(),
        Fetch::RetVal => "$retval".into(),
        Fetch::Comm => "$comm".into(),
        Fetch::Errno => "$errno".into(),
        Fetch::Var { path, .. } => path.clone(),
    }
}

/// A function's signature and the variables in scope where a probe on it goes, as
/// `dprobe list --args` prints them.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The function's name.
    pub name: String,
    /// Its return type, in C.
    pub returns: String,
    /// Bytes from the entry where a probe that fetches variables goes.
    pub offset: u64,
    /// Parameters, in order.
    pub params: Vec<VarInfo>,
    /// Locals in scope there.
    pub locals: Vec<VarInfo>,
}

/// A variable: its name, C type, and where it is at the probe's address (or why not).
#[derive(Debug, Clone)]
pub struct VarInfo {
    /// Its name.
    pub name: String,
    /// Its type, in C.
    pub type_name: String,
    /// `Ok(%di)`, `Ok(-20(%bp))`, or why it cannot be read there.
    pub location: Result<String, String>,
}

/// The signature of `function` and its variables where a probe on it that fetches them goes
/// (past the prologue when they live in stack slots).
pub fn signature(info: &DebugInfo, function: &str) -> Result<Signature, VarError> {
    let f = info.function(function)?.ok_or_else(|| VarError::NoFunction { name: function.into() })?;
    let offset = place_vars(info, function, None, &[])?.offset;
    let pc = f.low_pc + offset;
    let r = Resolver { info, function: &f, cx: f.cx(info), pc, vars: f.vars_at(info, pc)?, statics: Statics::FromIp };
    let die = r.cx.entry(f.die)?;
    let returns = r.cx.spell(r.cx.type_of(&die));
    let (mut params, mut locals) = (Vec::new(), Vec::new());
    for var in &r.vars {
        let e = r.cx.entry(var.die)?;
        let location = match r.place(var) {
            Ok(Place::Register(reg)) => Ok(format!("%{reg}")),
            Ok(Place::Static(address)) => Ok(format!("@{address:#x} (static)")),
            Ok(Place::StaticPieces(pieces)) => Ok(pieces
                .iter()
                .filter_map(|p| Some(format!("@{:#x} (bytes {}-{})", p.address?, p.start, p.start + p.size - 1)))
                .collect::<Vec<_>>()
                .join(", ")),
            Ok(Place::Memory { base, offset }) => Ok(fetch_text(&Fetch::Deref { offset, inner: Box::new(base) })),
            Err(e) => Err(e.to_string()),
        };
        let v = VarInfo { name: var.name.clone(), type_name: r.cx.spell(r.cx.type_of(&e)), location };
        if var.is_param {
            params.push(v);
        } else {
            locals.push(v);
        }
    }
    Ok(Signature { name: f.name.clone(), returns, offset, params, locals })
}
