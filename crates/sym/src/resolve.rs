//! The resolver: from what a user names (`[BINARY:]FUNCTION[+OFFSET]`, `[BINARY:]0xADDR`, or
//! an address) to one place in code, a [`Target`]. Every engine and `dprobe list` resolve
//! through here, against a process's maps and symbols or against one file.

use dprobe_arch::Addr;
use dprobe_spec::SpecError;

use crate::cache::object_file;
use crate::ifunc::{chosen_implementation, Unchosen};
use crate::maps::Mapping;
use crate::object_name::ObjectName;
use crate::symbols::debug_file_function;
use crate::symbols::{Function, Symbols};

/// A resolved probe target: the object, the function around it, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The function that holds it: its object, symbol and bounds (`start`, `size`).
    pub function: Function,
    /// Bytes from the function's first instruction.
    pub offset: u64,
    /// Its run-time address (its link-time address when resolved in a file).
    pub addr: Addr,
    /// Where it is in the object's file (for `uprobe_events`' `PATH:OFFSET`).
    pub file_offset: u64,
}

impl Target {
    /// The object's path.
    pub fn object(&self) -> &str {
        &self.function.object
    }

    /// Whether it is a function's first instruction.
    pub fn is_function_entry(&self) -> bool {
        self.offset == 0
    }

    /// `libc.so.6:open+0x4`, for messages.
    pub fn label(&self) -> String {
        let f = &self.function;
        format!("{}:{}+{:#x}", f.object_file_name(), f.demangled.as_deref().unwrap_or(&f.name), self.offset)
    }
}

/// Why a target does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The target's text does not parse.
    #[error(transparent)]
    BadName(#[from] SpecError),
    /// A kernel function or tracepoint, which only the kernel engine places.
    #[error("`{what}` is not in user space: only the kernel engine (`-a`) probes it")]
    NotUserCode {
        /// The target.
        what: String,
    },
    /// A static probe (`usdt:`), which may have several sites: [`crate::usdt_probes`] lists
    /// them, each one an address.
    #[error("`{what}` is a static probe: its sites come from the binary's notes, not from one symbol")]
    StaticProbe {
        /// The target.
        what: String,
    },
    /// `BINARY` is a path, and there is no such file.
    #[error("`{path}`: no such file ({reason})")]
    NoSuchFile {
        /// The path as given.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// No loaded object has that name (a library may load it later).
    #[error("`{object}` is not loaded")]
    ObjectNotLoaded {
        /// The name asked for.
        object: String,
    },
    /// No function of that name.
    #[error("symbol `{symbol}` not found in any loaded object")]
    SymbolNotFound {
        /// `[BINARY:]NAME` as asked for.
        symbol: String,
    },
    /// `FUNCTION+OFFSET` past the end of the function.
    #[error("offset {offset:#x} is past the end of `{symbol}` ({size} bytes)")]
    OffsetOutOfFunction {
        /// The function.
        symbol: String,
        /// The offset asked for.
        offset: u64,
        /// The function's size.
        size: u64,
    },
    /// Nothing is mapped at the address.
    #[error("{addr} is not probe-able code: {}", self.why_not_code().unwrap_or_default())]
    NotMapped {
        /// The address.
        addr: Addr,
    },
    /// The address is mapped, but not executable.
    #[error("{addr} is not probe-able code: {}", self.why_not_code().unwrap_or_default())]
    NotCode {
        /// The address.
        addr: Addr,
        /// The mapping's permissions (`rw-p`).
        perms: String,
        /// Its file, or `anonymous memory`.
        what: String,
    },
    /// A source line: the debug information turns it into addresses before it gets here.
    #[error("`{line}` is a source line: it is found through the binary's debug information, not its symbols")]
    SourceLine {
        /// The line as written.
        line: String,
    },
    /// A PLT stub named as `NAME@plt`.
    #[error(
        "`{name}@plt` is a PLT stub, which dprobe does not probe: probe `{name}` itself (e.g. `libc:{name}`), \
         which every call through the stub reaches"
    )]
    PltStub {
        /// The function the stub jumps to.
        name: String,
    },
    /// The address is in a PLT.
    #[error("{addr} is not probe-able code: {}", self.why_not_code().unwrap_or_default())]
    InPlt {
        /// The address.
        addr: Addr,
        /// The object whose PLT it is.
        object: String,
    },
    /// An indirect function (`STT_GNU_IFUNC`) whose chosen implementation is not known.
    #[error(
        "`{symbol}` is an indirect function (the loader chooses its implementation for this CPU) and dprobe \
         cannot tell which one: {why}; probe an implementation instead{}",
        if candidates.is_empty() { String::new() } else { format!(": {}", candidates.join(", ")) }
    )]
    IndirectFunction {
        /// `[BINARY:]NAME` as asked for.
        symbol: String,
        /// Why the implementation is not known.
        why: String,
        /// The object's functions named like implementations of it (`__strlen_avx2`).
        candidates: Vec<String>,
    },
    /// An indirect function whose resolver chooses code outside its object (the clock
    /// functions' resolvers choose the kernel's vDSO).
    #[error(
        "`{symbol}` is an indirect function whose implementation on this machine is outside the library \
         (for the clock functions, in the kernel's vDSO, which no engine can probe): probe its callers instead"
    )]
    IndirectFunctionElsewhere {
        /// `[BINARY:]NAME` as asked for.
        symbol: String,
    },
    /// No function symbol covers the address, so its instruction boundaries are unknown.
    #[error("{addr} is not probe-able code: {}", self.why_not_code().unwrap_or_default())]
    NoFunction {
        /// The address.
        addr: Addr,
    },
}

impl ResolveError {
    /// For an address that is not probe-able code, why not.
    pub fn why_not_code(&self) -> Option<String> {
        match self {
            ResolveError::NotMapped { .. } => Some("nothing is mapped there".into()),
            ResolveError::NotCode { perms, what, .. } => {
                Some(format!("it is data, not code (a {perms} mapping of {what})"))
            }
            ResolveError::InPlt { object, .. } => Some(format!(
                "it is a PLT stub of `{object}`, which dprobe does not probe: probe the function the stub jumps \
                 to, which every call through it reaches"
            )),
            ResolveError::NoFunction { .. } => Some(
                "no function symbol covers it, so dprobe cannot check that it is on an instruction boundary".into(),
            ),
            _ => None,
        }
    }

    /// Whether the object may still appear (a library the program has not loaded yet).
    pub fn may_load_later(&self) -> bool {
        matches!(self, ResolveError::ObjectNotLoaded { .. } | ResolveError::SymbolNotFound { .. })
    }
}

fn hex_address(s: &str) -> Option<u64> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).and_then(|h| u64::from_str_radix(h, 16).ok())
}

impl Symbols {
    /// Resolve a target of the spec language. A user target is `[BINARY:]FUNCTION[+OFFSET]`
    /// or `[BINARY:]0xADDR[+OFFSET]`: with a `BINARY` the address is the one in that file
    /// (as `objdump` shows it), without, an address in the process.
    pub fn resolve(&self, maps: &[Mapping], target: &dprobe_spec::ProbePoint) -> Result<Target, ResolveError> {
        match target {
            dprobe_spec::ProbePoint::User { binary, function, offset } => {
                self.resolve_name(maps, binary.as_deref(), function, *offset)
            }
            dprobe_spec::ProbePoint::Kernel { function, .. } => {
                Err(ResolveError::NotUserCode { what: function.clone() })
            }
            dprobe_spec::ProbePoint::Usdt { binary, provider, name } => {
                let provider = provider.as_deref().map(|p| format!("{p}:")).unwrap_or_default();
                Err(ResolveError::StaticProbe { what: format!("usdt:{binary}:{provider}{name}") })
            }
            dprobe_spec::ProbePoint::Line { line, .. } => Err(ResolveError::SourceLine { line: line.to_string() }),
            dprobe_spec::ProbePoint::Tracepoint { subsystem, event } => {
                Err(ResolveError::NotUserCode { what: format!("tracepoint:{subsystem}:{event}") })
            }
        }
    }

    /// Resolve `[BINARY:]FUNCTION` (or `0xADDR`) plus `offset`.
    pub fn resolve_name(
        &self,
        maps: &[Mapping],
        binary: Option<&str>,
        function: &str,
        offset: u64,
    ) -> Result<Target, ResolveError> {
        let object = binary.map(ObjectName::new).transpose()?;
        if let Some(object) = &object {
            if self.bias_of(object).is_none() {
                return Err(ResolveError::ObjectNotLoaded { object: object.to_string() });
            }
        }
        if let Some(a) = hex_address(function) {
            let addr = match &object {
                Some(o) => Addr(a.wrapping_add(self.bias_of(o).unwrap_or(0)).wrapping_add(offset)),
                None => Addr(a.wrapping_add(offset)),
            };
            let target = self.resolve_addr(maps, addr)?;
            if object.as_ref().is_some_and(|o| !o.matches(target.object())) {
                return Err(ResolveError::NoFunction { addr });
            }
            return Ok(target);
        }
        if let Some(name) = function.strip_suffix("@plt") {
            return Err(ResolveError::PltStub { name: name.to_owned() });
        }
        let symbol = || binary.map_or_else(|| function.to_owned(), |b| format!("{b}:{function}"));
        let f =
            self.find_in(object.as_ref(), function).ok_or_else(|| ResolveError::SymbolNotFound { symbol: symbol() })?;
        let chosen;
        let f = if f.ifunc {
            chosen = self.implementation_of(f, &symbol(), offset)?;
            &chosen
        } else {
            f
        };
        if offset >= f.size {
            return Err(ResolveError::OffsetOutOfFunction { symbol: function.to_owned(), offset, size: f.size });
        }
        let addr = f.start.offset(offset);
        self.check_code(maps, addr)?;
        Ok(Target { function: f.clone(), offset, addr, file_offset: f.file_offset + offset })
    }

    /// The function an indirect function's callers run (see [`crate::ifunc`]).
    fn implementation_of(&self, ifunc: &Function, symbol: &str, offset: u64) -> Result<Function, ResolveError> {
        let refuse = |why: &str| {
            // Implementations are named after the function: `__strlen_avx2`, `__memcpy_erms`.
            let stem = ifunc.name.trim_start_matches('_');
            let mut candidates: Vec<String> = self
                .functions()
                .iter()
                .filter(|g| g.object == ifunc.object && !g.ifunc)
                .filter(|g| {
                    let rest = g.name.strip_prefix("__").and_then(|r| r.strip_prefix(stem));
                    rest.is_some_and(|r| r.starts_with('_'))
                })
                .map(|g| g.name.to_string())
                .collect();
            candidates.sort();
            candidates.dedup();
            ResolveError::IndirectFunction { symbol: symbol.to_owned(), why: why.to_owned(), candidates }
        };
        if offset != 0 {
            return Err(refuse("an offset into its resolver is not code that callers run"));
        }
        let file = object_file(&ifunc.object).ok_or_else(|| refuse(Unchosen::Unreadable.reason()))?;
        let data = file.bytes().ok_or_else(|| refuse(Unchosen::Unreadable.reason()))?;
        let resolver = ifunc.start.0.wrapping_sub(ifunc.bias);
        let chosen = chosen_implementation(&ifunc.object, &data, resolver).map_err(|u| match u {
            Unchosen::OutsideObject => ResolveError::IndirectFunctionElsewhere { symbol: symbol.to_owned() },
            u => refuse(u.reason()),
        })?;
        if let Some(g) = self.containing(Addr(chosen.wrapping_add(ifunc.bias))).filter(|g| g.object == ifunc.object) {
            return Ok(g.clone());
        }
        // A stripped library (Debian's libc) names its implementations only in its separate
        // debug file (`libc6-dbg`).
        debug_file_function(&file, chosen, ifunc.bias).ok_or_else(|| {
            refuse(
                "the library names its implementations only in its debug symbols, which are not installed \
                 (for libc: the libc6-dbg package)",
            )
        })
    }

    /// Resolve an address in the process (in the file, for symbols of a file): it must be
    /// code, inside a function whose bounds are known.
    pub fn resolve_addr(&self, maps: &[Mapping], addr: Addr) -> Result<Target, ResolveError> {
        self.check_code(maps, addr)?;
        let Some(f) = self.containing(addr) else {
            return Err(match self.plt_containing(addr) {
                Some(object) => ResolveError::InPlt { addr, object: object.to_string() },
                None => ResolveError::NoFunction { addr },
            });
        };
        let offset = addr.0 - f.start.0;
        Ok(Target { function: f.clone(), offset, addr, file_offset: f.file_offset + offset })
    }

    /// For a process, that `addr` is mapped and executable.
    fn check_code(&self, maps: &[Mapping], addr: Addr) -> Result<(), ResolveError> {
        if self.is_file() {
            return Ok(());
        }
        let mapping = crate::mapping_index(maps, addr).map(|i| &maps[i]).ok_or(ResolveError::NotMapped { addr })?;
        if !mapping.exec {
            let what = mapping.path.clone().unwrap_or_else(|| "anonymous memory".into());
            return Err(ResolveError::NotCode { addr, perms: mapping.perms(), what });
        }
        Ok(())
    }
}
