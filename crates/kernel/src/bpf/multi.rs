//! A counting program attached to all the user-space places of a probe at once, through
//! one `uprobe_multi` link (Linux 6.6) instead of a perf event per tracefs event.
//!
//! The reason is the end of a trace. The kernel lets go of a perf event's uprobe under a
//! global lock, after a grace period: one probe at a time, about a tenth of a second each
//! (53 probes took 7 s). A link lets go of all its places after one grace period, and the
//! links of several probes, closed together, wait for the same one.
//!
//! The kernel takes such a link only for a program loaded for it (`expected_attach_type`),
//! which the BPF library dprobe uses cannot load: the program is loaded here, from the same
//! object, with the maps the library made (and filled, for the constants).

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::maps::Map;
use aya::Ebpf;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

/// `BPF_TRACE_UPROBE_MULTI`: the attach type of a program loaded for uprobe_multi links.
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// The link's places are return probes.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The places of a probe in one file: its path, the file offsets, and for a static probe the
/// file offsets of their semaphores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlaces {
    /// The probed file.
    pub path: String,
    /// The file offset of each place.
    pub offsets: Vec<u64>,
    /// For each place, its semaphore's file offset (a static probe's), or 0 for none.
    pub semaphores: Vec<u64>,
    /// Return probes (the program runs as each call returns).
    pub returns: bool,
}

/// Load program `name` of `object` for uprobe_multi links, its maps those `ebpf` made from
/// the same object.
pub fn load(ebpf: &Ebpf, object: &[u8], name: &str) -> Result<OwnedFd, String> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("reading the BPF object: {e}"))?;
    let maps = obj.maps.clone();
    let mut fds = Vec::new();
    for map_name in maps.keys() {
        let map = ebpf.map(map_name).ok_or_else(|| format!("no map `{map_name}` loaded"))?;
        fds.push((map_name.as_str(), map_fd(map).ok_or_else(|| format!("map `{map_name}`: unexpected type"))?));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let with_fds = fds.iter().map(|(n, fd)| (*n, fd.as_raw_fd(), &maps[*n]));
    obj.relocate_maps(with_fds, &text_sections).map_err(|e| format!("relocating the BPF program: {e}"))?;
    obj.relocate_calls(&text_sections).map_err(|e| format!("relocating the BPF program: {e}"))?;
    let program = obj.programs.get(name).ok_or_else(|| format!("no program {name} in the BPF object"))?;
    let function = &obj.functions[&program.function_key()];
    load_program(&function.instructions, &program.license, name)
}

/// The file descriptor of a map of the types the counting program uses.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) | Map::PerCpuHashMap(d) => Some(d.fd().as_fd()),
        _ => None,
    }
}

/// `BPF_PROG_LOAD` of a kprobe-type program for uprobe_multi links; the verifier's log in
/// the error. Loaded first without a log, as aya does: a log that overflows its buffer fails
/// the load on some kernels.
fn load_program(insns: &[aya_obj::generated::bpf_insn], license: &CString, name: &str) -> Result<OwnedFd, String> {
    let refused = match load_with_log(insns, license, name, None) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    // Again, for the verifier's reason.
    let mut log = vec![0u8; 1 << 20];
    if let Ok(fd) = load_with_log(insns, license, name, Some(&mut log)) {
        return Ok(fd);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]);
    Err(format!("the kernel refused the BPF program for a uprobe_multi link: {refused}: {}", log.trim_end()))
}

/// One `BPF_PROG_LOAD` of the program, with the verifier writing its log into `log` if given.
fn load_with_log(
    insns: &[aya_obj::generated::bpf_insn],
    license: &CString,
    name: &str,
    log: Option<&mut [u8]>,
) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data (integers and unions of integers): all zeros is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    let mut prog_name = [0 as std::ffi::c_char; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as std::ffi::c_char;
    }
    // SAFETY: writing the fields of the BPF_PROG_LOAD member of a zeroed attribute union.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        if let Some(log) = log {
            load.log_level = 1;
            load.log_size = log.len() as u32;
            load.log_buf = log.as_mut_ptr() as u64;
        }
        load.prog_name = prog_name;
        load.expected_attach_type = BPF_TRACE_UPROBE_MULTI;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// Attach `program` (from [`load`]) to `places` through a new uprobe_multi link; the link,
/// which detaches it when closed.
pub fn link(program: BorrowedFd<'_>, places: &UserPlaces) -> io::Result<OwnedFd> {
    let path = CString::new(places.path.as_str()).map_err(io::Error::other)?;
    if places.offsets.is_empty() || places.semaphores.len() != places.offsets.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let semaphores = places.semaphores.iter().any(|&s| s != 0).then_some(places.semaphores.as_ptr());
    // SAFETY: bpf_attr is plain data: all zeros is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the BPF_LINK_CREATE member of a zeroed attribute union;
    // the pointers are to `path` and `places`, alive across the call.
    unsafe {
        let create = &mut attr.link_create;
        create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
        create.attach_type = BPF_TRACE_UPROBE_MULTI;
        let multi = &mut create.__bindgen_anon_3.uprobe_multi;
        multi.path = path.as_ptr() as u64;
        multi.offsets = places.offsets.as_ptr() as u64;
        multi.ref_ctr_offsets = semaphores.map_or(0, |p| p as u64);
        multi.cnt = places.offsets.len() as u32;
        multi.flags = if places.returns { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
    }
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// The `bpf` system call `cmd`, which returns a new file descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialized bpf_attr of the size given; the kernel reads it
    // (and the memory its pointers name, which the callers keep alive) and may write the
    // verifier's log into the buffer it names.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, std::mem::size_of::<bpf_attr>())
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}
