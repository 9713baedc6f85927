//! Function symbols of every object loaded in this process: the executable and each shared
//! library, from their ELF `.symtab` and `.dynsym` (with the `object` crate), placed at their
//! load addresses through `/proc/self/maps`. Function sizes give the bounds used to check that
//! a probe address is on an instruction boundary.

use std::collections::HashMap;
use std::sync::Arc;

use dprobe_arch::Addr;
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::maps::Mapping;

/// A function of a loaded object, at its runtime address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its symbol name (mangled, as in the symbol table).
    pub name: String,
    /// Runtime address of its first instruction.
    pub start: Addr,
    /// Size in bytes.
    pub size: u64,
    /// Path of the object that defines it.
    pub object: Arc<str>,
}

impl Function {
    /// Whether `addr` is inside the function.
    pub fn contains(&self, addr: Addr) -> bool {
        addr >= self.start && addr.0 < self.start.0 + self.size
    }
}

/// The functions of all loaded objects.
#[derive(Debug, Default)]
pub struct Symbols {
    by_addr: Vec<Function>,
    by_name: HashMap<String, Vec<usize>>,
    objects: Vec<Arc<str>>,
}

impl Symbols {
    /// Read the symbols of every ELF file mapped executable in `maps`. Objects that cannot be
    /// read (deleted files, the vDSO) are skipped.
    pub fn load(maps: &[Mapping]) -> Symbols {
        let mut paths: Vec<&str> = Vec::new();
        for m in maps.iter().filter(|m| m.exec) {
            if let Some(p) = m.path.as_deref().filter(|p| p.starts_with('/')) {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        let mut funcs = Vec::new();
        let mut objects = Vec::new();
        for path in paths {
            let object: Arc<str> = Arc::from(path);
            if let Some(bias) = load_bias(maps, path) {
                read_functions(&object, bias, &mut funcs);
                objects.push(object);
            }
        }
        funcs.sort_by(|a, b| a.start.cmp(&b.start).then(a.name.cmp(&b.name)));
        funcs.dedup_by(|a, b| a.start == b.start && a.name == b.name);
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, f) in funcs.iter().enumerate() {
            by_name.entry(f.name.clone()).or_default().push(i);
        }
        Symbols { by_addr: funcs, by_name, objects }
    }

    /// Find a function by `[OBJECT:]NAME[@VERSION]`: `getpid`, `libc:openat`,
    /// `open@@GLIBC_2.2.5`. The executable's definition wins over a library's, then libraries
    /// in load order.
    pub fn find(&self, spec: &str) -> Option<&Function> {
        let (object, name) = match spec.split_once(':') {
            Some((o, n)) if !o.is_empty() && !n.starts_with(':') => (Some(o), n),
            _ => (None, spec),
        };
        let name = name.split('@').next().unwrap_or(name);
        let candidates = self.by_name.get(name)?;
        let matches_object = |f: &Function| {
            object.is_none_or(|o| {
                let file = f.object.rsplit('/').next().unwrap_or(&f.object);
                file == o
                    || file.starts_with(&format!("{o}.so"))
                    || file.starts_with(&format!("{o}-"))
                    || *f.object == *o
            })
        };
        let rank = |f: &Function| self.objects.iter().position(|o| *o == f.object).unwrap_or(usize::MAX);
        candidates.iter().map(|&i| &self.by_addr[i]).filter(|f| matches_object(f)).min_by_key(|f| rank(f))
    }

    /// The function containing `addr`.
    pub fn containing(&self, addr: Addr) -> Option<&Function> {
        let i = self.by_addr.partition_point(|f| f.start <= addr);
        self.by_addr[..i].iter().rev().take(16).find(|f| f.contains(addr))
    }

    /// Every function, in address order.
    pub fn functions(&self) -> &[Function] {
        &self.by_addr
    }
}

/// Runtime address minus link-time address for the object at `path`: where its first
/// loadable segment (file offset 0) was mapped, minus that segment's page-aligned address.
fn load_bias(maps: &[Mapping], path: &str) -> Option<u64> {
    let first = maps.iter().find(|m| m.path.as_deref() == Some(path) && m.offset == 0)?;
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let seg = file.segments().find(|s| s.file_range().0 == 0)?;
    let link = seg.address() & !0xfff;
    Some(first.start.0.wrapping_sub(link))
}

fn read_functions(object: &Arc<str>, bias: u64, out: &mut Vec<Function>) {
    let Ok(data) = std::fs::read(&**object) else { return };
    let Ok(file) = object::File::parse(&*data) else { return };
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.size() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        out.push(Function {
            name: name.to_owned(),
            start: Addr(sym.address().wrapping_add(bias)),
            size: sym.size(),
            object: object.clone(),
        });
    }
}
