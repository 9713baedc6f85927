//! Symbols for dprobe: which functions a process (this one or another) has loaded, where
//! they are at run time, how big they are, and where they are in their files.
//!
//! * [`read_maps`] / [`read_maps_of`]: `/proc/PID/maps`;
//! * [`Symbols`]: the functions of every ELF object mapped executable, from `.symtab` and
//!   `.dynsym` (with the `object` crate), placed at their load addresses, with symbol versions
//!   (`open@@GLIBC_2.2.5`) and demangled Rust and C++ names;
//! * [`Function::file_offset`]: where an address is in its file, for the kernel's
//!   `uprobe_events` (`PATH:OFFSET`).
//!
//! ```no_run
//! use dprobe_sym::{read_maps, Symbols};
//! let symbols = Symbols::load(&read_maps()?);
//! let getpid = symbols.find("libc:getpid").expect("libc is loaded");
//! println!("{} at {} in {} ({} bytes)", getpid.name, getpid.start, getpid.object, getpid.size);
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod demangle;
mod maps;
mod symbols;

pub use demangle::demangle;
pub use maps::{free_pages_near, parse_maps, read_maps, read_maps_of, Mapping};
pub use symbols::{Function, Symbols};
