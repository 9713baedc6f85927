//! Symbols for dprobe: which functions a process (this one or another) has loaded, where
//! they are at run time, how big they are, and where they are in their files.
//!
//! * [`read_maps`] / [`read_maps_of`]: `/proc/PID/maps`;
//! * [`Symbols`]: the functions of every ELF object mapped executable, from `.symtab` and
//!   `.dynsym` (with the `object` crate), placed at their load addresses, with symbol versions
//!   (`open@@GLIBC_2.2.5`) and demangled Rust and C++ names;
//! * [`Function::file_offset`]: where an address is in its file, for the kernel's
//!   `uprobe_events` (`PATH:OFFSET`);
//! * [`Symbols::resolve`]: the one resolver, from a probe spec's target
//!   (`[BINARY:]FUNCTION[+OFFSET]`, `BINARY:0xADDR`) or an address to a [`Target`]
//!   (object, function and bounds, offset, run-time address, file offset), used by every
//!   engine and by `dprobe list`; [`ObjectName`]: the one rule for what `BINARY` names;
//! * [`usdt_probes`]: the static probes (`<sys/sdt.h>`) of a file, with their semaphores and
//!   their arguments as fetch arguments.
//!
//! ```no_run
//! use dprobe_sym::{read_maps, Symbols};
//! let maps = read_maps()?;
//! let symbols = Symbols::load(&maps);
//! let getpid = symbols.find("libc:getpid").expect("libc is loaded");
//! println!("{} at {} in {} ({} bytes)", getpid.name, getpid.start, getpid.object, getpid.size);
//! let target = dprobe_spec::parse_point("libc:getpid+1").expect("a target");
//! let at = symbols.resolve(&maps, &target).expect("resolves");
//! println!("{} at {}, file offset {:#x}", at.label(), at.addr, at.file_offset);
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod cache;
mod demangle;
mod file_bytes;
mod handover;
mod ifunc;
mod ifunc_choices;
mod landing_pads;
mod lsda;
mod maps;
mod name_index;
mod needed;
mod object_name;
mod resolve;
mod sparse_read;
mod symbols;
mod usdt;
mod window_branches;

pub use cache::forget_object_files;
pub use demangle::demangle;
pub use file_bytes::FileBytes;
pub use handover::{
    export_objects, export_objects_with_images, import_objects, import_objects_with_images, FileVersion,
};
pub use ifunc::{run_resolvers_with, ResolverRunner};
pub use ifunc_choices::{know_ifunc_choice, IfuncChoice, OwnIfuncChoices};
pub use landing_pads::landing_pads;
pub use maps::{free_pages_near, mapping_index, parse_maps, read_maps, read_maps_of, stack_ranges, Mapping};
pub use needed::needed_libraries;
pub use object_name::{is_c_library_or_loader, library_name_matches, resolvers_read_only_cpu_features, ObjectName};
pub use resolve::{ResolveError, Target};
pub use symbols::{code_files, load_bias_of, Function, Symbols};
pub use usdt::{parse_arg as parse_usdt_arg, usdt_probes, Semaphore, UsdtArg, UsdtError, UsdtProbe};
pub use window_branches::{check_object_branches, check_object_branches_in};
