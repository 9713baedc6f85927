//! Function symbols of the ELF objects a process has mapped.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use dprobe_arch::Addr;
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, SectionIndex, SymbolKind};

use crate::cache::{object_file, symbols_of, ObjectFile};
use crate::demangle::{demangle, without_parameters};
use crate::maps::Mapping;
pub(crate) use crate::name_index::NameIndex;
use crate::object_name::ObjectName;

/// How the name of a static probe's site begins ([`Function::is_static_probe_site`]).
pub(crate) const STATIC_PROBE_PREFIX: &str = "usdt:";

/// A function of a loaded object, at its run-time address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its symbol name as in the symbol table (mangled for Rust and C++).
    pub name: Arc<str>,
    /// The demangled name, for Rust and C++ symbols.
    pub demangled: Option<Arc<str>>,
    /// Its symbol version (`GLIBC_2.2.5`), for versioned dynamic symbols.
    pub version: Option<Arc<str>>,
    /// Whether that version is the default one (`@@`) rather than a hidden one (`@`).
    pub default_version: bool,
    /// Run-time address of its first instruction.
    pub start: Addr,
    /// Size in bytes, never past the end of the section that holds it (whatever the symbol
    /// table claims).
    pub size: u64,
    /// Path of the object that defines it.
    pub object: Arc<str>,
    /// Run-time address minus link-time address for its object.
    pub bias: u64,
    /// File offset of its first instruction in `object`.
    pub file_offset: u64,
    /// Whether it is a GNU indirect function (`STT_GNU_IFUNC`, e.g. libc's `strlen`): its
    /// code is a resolver the loader runs once to choose the implementation callers run.
    pub ifunc: bool,
}

impl Function {
    /// The same function in an object placed at `bias` (its symbols read at link-time
    /// addresses).
    pub(crate) fn at_bias(&self, bias: u64) -> Function {
        Function { start: Addr(self.start.0.wrapping_add(bias)), bias, ..self.clone() }
    }

    /// Whether `addr` is inside the function.
    pub fn contains(&self, addr: Addr) -> bool {
        addr >= self.start && addr.0 < self.start.0 + self.size
    }

    /// The file offset of `addr` inside the function (for `uprobe_events`' `PATH:OFFSET`).
    pub fn file_offset_of(&self, addr: Addr) -> Option<u64> {
        self.contains(addr).then(|| self.file_offset + (addr.0 - self.start.0))
    }

    /// Whether the compiler split this symbol off a function or specialized a copy of it
    /// (`f.cold`, `f.part.0`, `f.isra.0`, `f.constprop.0`; demangled `f(long) [clone .cold]`).
    /// A name that matches both the function and such a part means the function: a `.cold`
    /// part holds only its unlikely paths, so a probe there misses most calls.
    pub fn is_compiler_copy(&self) -> bool {
        [".cold", ".part.", ".isra.", ".constprop.", ".lto_priv."].iter().any(|suffix| self.name.contains(suffix))
    }

    /// `name@@VERSION` / `name@VERSION`, or the plain name.
    pub fn versioned_name(&self) -> String {
        match &self.version {
            Some(v) => format!("{}{}{v}", self.name, if self.default_version { "@@" } else { "@" }),
            None => self.name.to_string(),
        }
    }

    /// The demangled name without its parameter list (`ns::Widget::draw`), as probes name it.
    pub fn short_name(&self) -> Option<&str> {
        self.demangled.as_deref().map(without_parameters)
    }

    /// Whether it is the site of a static probe that no function symbol covers (a stripped
    /// program's `<sys/sdt.h>` probes): one instruction, named `usdt:PROVIDER:NAME`.
    pub fn is_static_probe_site(&self) -> bool {
        self.name.starts_with(STATIC_PROBE_PREFIX)
    }

    /// Whether the glob `pattern` (`*`, `?`) matches its symbol name, its demangled name or
    /// that without its parameter list: the one matcher of `dprobe list` and of probe specs.
    /// A static probe's site is no function, and matches none.
    pub fn matches_glob(&self, pattern: &str) -> bool {
        if self.is_static_probe_site() {
            return false;
        }
        let p = pattern.as_bytes();
        dprobe_spec::glob(p, self.name.as_bytes())
            || self.demangled.as_deref().is_some_and(|d| dprobe_spec::glob(p, d.as_bytes()))
            || self.short_name().is_some_and(|d| dprobe_spec::glob(p, d.as_bytes()))
    }

    /// The object's file name (`libc.so.6`).
    pub fn object_file_name(&self) -> &str {
        self.object.rsplit('/').next().unwrap_or(&self.object)
    }
}

/// The functions of all loaded objects of a process. Cloning it is cheap: its tables are
/// shared.
#[derive(Debug, Default, Clone)]
pub struct Symbols {
    by_addr: Arc<[Function]>,
    /// Each object's names (see [`NameIndex`]), with where its functions begin in `by_addr`,
    /// in address order.
    by_name: Arc<[(Arc<NameIndex>, usize)]>,
    /// Each object's path and bias, in load order.
    objects: Arc<[(Arc<str>, u64)]>,
    /// The PLT sections (`.plt`, `.plt.sec`, `.plt.got`) of each object: start, end, object.
    plt: Arc<[(Addr, Addr, Arc<str>)]>,
    /// Read from one file, at link-time addresses (no process maps it).
    file: bool,
    /// The functions only the objects' separate debug files name (the static functions of a
    /// stripped library, with `libc6-dbg` installed), in address order: read the first time an
    /// address lies outside every function above.
    debug_only: Arc<OnceLock<Arc<[Function]>>>,
}

impl Symbols {
    /// Read the symbols of every ELF file mapped executable in `maps`. Objects that cannot be
    /// read (deleted files, the vDSO) are skipped. For another process, pass its maps: the
    /// files are read through the paths it mapped. Each version of a file is read once, and
    /// the same files at the same addresses give the same (shared) tables.
    pub fn load(maps: &[Mapping]) -> Symbols {
        let loaded: Vec<(Arc<ObjectFile>, u64)> = code_files(maps)
            .into_iter()
            .filter_map(|path| {
                let file = object_file(path)?;
                let bias = load_bias(maps, path, file.first_segment?)?;
                Some((file, bias))
            })
            .collect();
        symbols_of(&loaded, || Symbols::of_objects(&loaded, false))
    }

    /// Read the symbols of one ELF file, at its link-time addresses (nothing is running it).
    /// The object is named by its canonical path, as a process's maps would name it.
    pub fn load_file(path: &str) -> std::io::Result<Symbols> {
        let canonical = std::fs::canonicalize(path)?;
        let file = object_file(&canonical.to_string_lossy()).ok_or_else(|| match std::fs::metadata(path) {
            Err(e) => e,
            Ok(m) if !m.is_file() => std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            Ok(_) => std::io::Error::new(std::io::ErrorKind::InvalidData, "not an ELF file"),
        })?;
        Ok(Symbols::of_objects(&[(file, 0)], true))
    }

    /// The symbols of `objects`, each placed at its bias. Each object's functions come sorted
    /// and indexed by name from its file (read once per file, [`NameIndex`]); the objects lie
    /// apart in memory, so placing them one after the other in address order keeps the whole
    /// in address order (checked: where it is not, as for objects that overlap, the whole is
    /// sorted and indexed again here).
    fn of_objects(objects: &[(Arc<ObjectFile>, u64)], file: bool) -> Symbols {
        let mut plt = Vec::new();
        for (object, bias) in objects {
            let path = object.path();
            plt.extend(
                object.plt.iter().map(|&(start, end)| {
                    (Addr(start.wrapping_add(*bias)), Addr(end.wrapping_add(*bias)), path.clone())
                }),
            );
        }
        let lowest =
            |(object, bias): &&(Arc<ObjectFile>, u64)| object.functions.first().map(|f| f.start.0.wrapping_add(*bias));
        let mut placed: Vec<&(Arc<ObjectFile>, u64)> = objects.iter().collect();
        placed.sort_by_key(lowest);
        let mut funcs = Vec::with_capacity(placed.iter().map(|(o, _)| o.functions.len()).sum());
        let mut by_name = Vec::with_capacity(placed.len());
        for (object, bias) in placed {
            by_name.push((object.names.clone(), funcs.len()));
            funcs.extend(object.functions.iter().map(|f| f.at_bias(*bias)));
        }
        let objects: Vec<(Arc<str>, u64)> = objects.iter().map(|(o, bias)| (o.path(), *bias)).collect();
        if !funcs.is_sorted_by(|a, b| in_order(a, b) != std::cmp::Ordering::Greater) {
            sort_functions(&mut funcs);
            by_name = vec![(Arc::new(NameIndex::of(&funcs)), 0)];
        }
        Symbols {
            by_addr: funcs.into(),
            by_name: by_name.into(),
            objects: Arc::from(objects),
            plt: plt.into(),
            file,
            debug_only: Arc::default(),
        }
    }

    /// Find a function by `[OBJECT:]NAME[@VERSION|@@VERSION]`. NAME is the symbol name or a
    /// demangled path (`my_crate::parse`, `ns::Widget::draw`); OBJECT is a file name or its
    /// stem (`libc` for `libc.so.6`) or a path. Without a version, the default version wins.
    /// The executable's definition wins over a library's, then libraries in load order.
    /// A function wins over the parts and copies the compiler made of it (`f.cold`, `f.isra.0`).
    pub fn find(&self, spec: &str) -> Option<&Function> {
        let (object, name) = dprobe_spec::split_binary(spec);
        match object {
            Some(o) => self.find_in(Some(&ObjectName::new(o).ok()?), name),
            None => self.find_in(None, name),
        }
    }

    /// Find function `NAME[@VERSION|@@VERSION]` in `object` (any object when `None`), as
    /// [`Symbols::find`] does.
    pub fn find_in(&self, object: Option<&ObjectName>, name: &str) -> Option<&Function> {
        let (name, version) = match name.split_once('@') {
            Some((n, v)) => (n, Some(v.trim_start_matches('@'))),
            None => (name, None),
        };
        let matches_object = |f: &Function| object.is_none_or(|o| o.matches(&f.object));
        let matches_version = |f: &Function| version.is_none_or(|v| f.version.as_deref() == Some(v));
        let rank = |f: &Function| {
            let object_rank = self.objects.iter().position(|(o, _)| *o == f.object).unwrap_or(usize::MAX);
            (object_rank, f.is_compiler_copy(), !f.default_version && f.version.is_some())
        };
        self.by_name
            .iter()
            .flat_map(|(names, first)| names.get(name).iter().map(move |&i| first + i as usize))
            .map(|i| &self.by_addr[i])
            .filter(|f| matches_object(f) && matches_version(f))
            .min_by_key(|f| rank(f))
    }

    /// The cold part the compiler split off function `f` (`f.cold`), when the symbols have
    /// one in the same object: jumps between a function and its cold part stay inside it.
    pub fn cold_part(&self, f: &Function) -> Option<&Function> {
        self.find_in(None, &format!("{}.cold", f.name))
            .filter(|c| c.object == f.object && c.size > 0 && c.start != f.start)
    }

    /// The function containing `addr`: one the objects' symbol tables name, else one only
    /// their separate debug files name. A stripped library's static functions are there alone:
    /// without them, an address the debug information gives inside one (a copy of a function
    /// inlined there) could not be checked as an instruction boundary, nor named in a stack.
    pub fn containing(&self, addr: Addr) -> Option<&Function> {
        covering(&self.by_addr, addr).or_else(|| covering(self.debug_only(), addr))
    }

    /// The functions only the objects' separate debug files name, at the objects' biases.
    fn debug_only(&self) -> &[Function] {
        self.debug_only.get_or_init(|| {
            let mut funcs: Vec<Function> = self
                .objects
                .iter()
                .filter_map(|(path, bias)| Some((object_file(path)?, *bias)))
                .flat_map(|(file, bias)| file.debug_functions().iter().map(|f| f.at_bias(bias)).collect::<Vec<_>>())
                .filter(|f| covering(&self.by_addr, f.start).is_none())
                .collect();
            funcs.sort_by_key(|f| f.start);
            funcs.into()
        })
    }

    /// Every function whose first instruction is at `addr` (aliases, folded copies).
    pub fn starting_at(&self, addr: Addr) -> impl Iterator<Item = &Function> {
        let first = self.by_addr.partition_point(|f| f.start < addr);
        self.by_addr[first..].iter().take_while(move |f| f.start == addr)
    }

    /// Whether `addr` is inside a procedure linkage table: a jump there calls a function.
    pub fn in_plt(&self, addr: Addr) -> bool {
        self.plt_containing(addr).is_some()
    }

    /// Every function, in address order.
    pub fn functions(&self) -> &[Function] {
        &self.by_addr
    }

    /// The objects whose symbols were read, in load order.
    pub fn objects(&self) -> Vec<Arc<str>> {
        self.objects.iter().map(|(o, _)| o.clone()).collect()
    }

    /// Run-time minus link-time address of the first object `object` names.
    pub(crate) fn bias_of(&self, object: &ObjectName) -> Option<u64> {
        self.objects.iter().find(|(o, _)| object.matches(o)).map(|(_, bias)| *bias)
    }

    /// The object whose PLT holds `addr`, if a PLT does.
    pub(crate) fn plt_containing(&self, addr: Addr) -> Option<&Arc<str>> {
        self.plt.iter().find(|(start, end, _)| *start <= addr && addr < *end).map(|(_, _, object)| object)
    }

    /// Whether these are the symbols of one file, at link-time addresses.
    pub fn is_file(&self) -> bool {
        self.file
    }
}

/// The files `maps` maps as code, each once, in the order of the maps: paths, not the
/// memory files (`/memfd:NAME (deleted)`) nor files deleted since they were mapped, whose
/// paths name no file.
pub fn code_files(maps: &[Mapping]) -> Vec<&str> {
    let mut paths: Vec<&str> = Vec::new();
    for path in maps.iter().filter(|m| m.exec).filter_map(|m| m.path.as_deref()) {
        let file = path.starts_with('/') && !path.starts_with("/memfd:") && !path.ends_with(" (deleted)");
        if file && !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// The order of functions in a symbol set: by address, then name, a versioned copy of a
/// symbol (from `.dynsym`) before the same symbol without its version (from `.symtab`).
fn in_order(a: &Function, b: &Function) -> std::cmp::Ordering {
    a.start.cmp(&b.start).then_with(|| a.name.cmp(&b.name)).then_with(|| a.version.is_none().cmp(&b.version.is_none()))
}

/// Sort `funcs` in [`in_order`] and keep one of each symbol that appears twice (in `.symtab`
/// and `.dynsym`): the versioned copy.
pub(crate) fn sort_functions(funcs: &mut Vec<Function>) {
    funcs.sort_by(in_order);
    funcs.dedup_by(|later, kept| later.start == kept.start && later.name == kept.name);
}

/// The function of `by_addr` (in address order) that contains `addr`.
fn covering(by_addr: &[Function], addr: Addr) -> Option<&Function> {
    let i = by_addr.partition_point(|f| f.start <= addr);
    by_addr[..i].iter().rev().take(16).find(|f| f.contains(addr))
}

/// Run-time address minus link-time address for the object at `path`: where its first
/// loadable segment (file offset 0) was mapped, minus that segment's page-aligned link-time
/// address `first_segment`.
fn load_bias(maps: &[Mapping], path: &str, first_segment: u64) -> Option<u64> {
    let first = maps.iter().find(|m| m.path.as_deref() == Some(path) && m.offset == 0)?;
    Some(first.start.0.wrapping_sub(first_segment))
}

/// Run-time address minus link-time address for the object at `path` in a process with
/// `maps`, reading the file; `None` when the process has not mapped it.
pub fn load_bias_of(maps: &[Mapping], path: &str) -> Option<u64> {
    maps.iter().find(|m| m.path.as_deref() == Some(path) && m.offset == 0)?;
    load_bias(maps, path, object_file(path)?.first_segment?)
}

/// Where the PLT stubs of an object are: its `.plt`, `.plt.sec` and `.plt.got` sections, at
/// link-time addresses (start, end). They have no symbols, so no function covers them.
pub(crate) fn plt_sections(data: &[u8]) -> Vec<(u64, u64)> {
    let Ok(file) = ElfFile64::<object::Endianness>::parse(data) else { return Vec::new() };
    file.sections()
        .filter(|s| matches!(s.name(), Ok(".plt" | ".plt.sec" | ".plt.got")))
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .collect()
}

/// The function at link-time address `addr` of `object` as its separate debug file names it
/// (`/usr/lib/debug/.build-id/xx/….debug`, found by build-id), placed at `bias`: stripped
/// libraries keep their local functions' names only there.
pub(crate) fn debug_file_function(object: &ObjectFile, addr: u64, bias: u64) -> Option<Function> {
    object.debug_functions().iter().find(|f| f.contains(Addr(addr))).map(|f| f.at_bias(bias))
}

/// The functions named in `symbols` (an object's file, or its debug file, whose section
/// headers are the object's), with bounds and file offsets from the object's bytes `code`.
pub(crate) fn read_symbols(object: &Arc<str>, symbols: &[u8], code: &[u8], bias: u64, out: &mut Vec<Function>) {
    let Ok(file) = ElfFile64::<object::Endianness>::parse(symbols) else { return };
    let endian = file.endian();
    let versions = file.elf_section_table().versions(endian, symbols).ok().flatten();
    let dynsym_section = file.elf_dynamic_symbol_table().section();
    let mut names = VersionNames::default();
    each_function_symbol(&file, code, |sym| {
        let (mut version, mut default_version) = (None, false);
        if sym.dynamic && dynsym_section.0 != 0 {
            if let Some(table) = &versions {
                let index = table.version_index(endian, sym.index);
                if let Ok(Some(v)) = table.version(index) {
                    version = Some(names.of(&String::from_utf8_lossy(v.name())));
                    default_version = !index.is_hidden();
                }
            }
        }
        out.push(Function {
            name: sym.name.into(),
            demangled: demangle(sym.name).map(Arc::from),
            version,
            default_version,
            start: Addr(sym.address.wrapping_add(bias)),
            size: sym.size,
            object: object.clone(),
            bias,
            file_offset: sym.file_offset,
            ifunc: sym.ifunc,
        });
    });
}

/// The symbol versions of one object's functions (a C library names a few dozen, each on
/// thousands of functions): one copy of each, shared.
#[derive(Default)]
pub(crate) struct VersionNames(Vec<Arc<str>>);

impl VersionNames {
    /// The shared copy of `version`.
    pub(crate) fn of(&mut self, version: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().rev().find(|v| ***v == *version) {
            return known.clone();
        }
        self.0.push(Arc::from(version));
        self.0[self.0.len() - 1].clone()
    }
}

/// The link-time starts of the functions [`read_symbols`] would read from `symbols` (with
/// `code`), indirect functions left out: without their names, versions and demangled forms,
/// which a set of starts does not need (a debug file's thousands of names cost most of its
/// reading).
pub(crate) fn function_starts(symbols: &[u8], code: &[u8]) -> Vec<Addr> {
    let mut starts = Vec::new();
    let Ok(file) = ElfFile64::<object::Endianness>::parse(symbols) else { return starts };
    each_function_symbol(&file, code, |sym| {
        if !sym.ifunc {
            starts.push(Addr(sym.address));
        }
    });
    starts
}

/// A function symbol [`each_function_symbol`] found.
struct FunctionSymbol<'a> {
    name: &'a str,
    /// Link-time address.
    address: u64,
    /// What the symbol table says, but never past its section: a crafted or damaged file
    /// cannot make dprobe read (or allocate) more than the file holds.
    size: u64,
    file_offset: u64,
    ifunc: bool,
    /// From the dynamic symbol table.
    dynamic: bool,
    index: object::SymbolIndex,
}

/// Each function defined in `file` (an object's file, or its debug file, whose section
/// headers are the object's) inside a section of the object's bytes `code` whose bytes are in
/// the file, from its symbol table and then its dynamic one.
fn each_function_symbol<'d>(
    file: &ElfFile64<'d, object::Endianness>,
    code: &[u8],
    mut each: impl FnMut(FunctionSymbol<'d>),
) {
    let Ok(code_file) = ElfFile64::<object::Endianness>::parse(code) else { return };
    // Where each section with contents is: (address, size, file offset). A section without
    // bytes in the file (`.bss`) or whose bytes run past the end of the file holds no code.
    let sections: HashMap<SectionIndex, (u64, u64, u64)> = code_file
        .sections()
        .filter_map(|s| {
            let (offset, size) = s.file_range()?;
            let in_file = offset.checked_add(size).is_some_and(|end| end <= code.len() as u64);
            in_file.then_some((s.index(), (s.address(), size.min(s.size()), offset)))
        })
        .collect();
    for (dynamic, table) in [(false, file.symbols()), (true, file.dynamic_symbols())] {
        for sym in table {
            let ifunc = sym.elf_symbol().st_type() == object::elf::STT_GNU_IFUNC;
            // `is_definition` says no to indirect functions: they are defined here all the same.
            let defined = sym.is_definition() || (ifunc && !sym.is_undefined());
            if sym.kind() != SymbolKind::Text || !defined || sym.size() == 0 {
                continue;
            }
            let Some(&(section_addr, section_size, section_offset)) =
                sym.section_index().and_then(|i| sections.get(&i))
            else {
                continue;
            };
            let address = sym.address();
            let Some(into) = address.checked_sub(section_addr).filter(|into| *into < section_size) else { continue };
            let Ok(name) = sym.name() else { continue };
            each(FunctionSymbol {
                name,
                address,
                size: sym.size().min(section_size - into),
                file_offset: section_offset + into,
                ifunc,
                dynamic,
                index: sym.index(),
            });
        }
    }
}
