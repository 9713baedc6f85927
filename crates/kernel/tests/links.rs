//! A user probe's counting program attached to all its places through one uprobe_multi link
//! (Linux 6.6), on this machine's kernel (as root): each place's hits counted exactly, return
//! probes at the returns, and the program's code back in the running process when the link
//! is closed.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

use dprobe_kernel::bpf::{Tally, TallyConfig, TallyOn, UserPlaces};
use dprobe_sym::Symbols;

use common::fixture;

/// The file offset of `function` in `path`.
fn file_offset(path: &str, function: &str) -> u64 {
    Symbols::load_file(path).unwrap().resolve_name(&[], None, function, 0).unwrap().file_offset
}

fn places(path: &str, functions: &[&str], returns: bool) -> UserPlaces {
    let offsets: Vec<u64> = functions.iter().map(|f| file_offset(path, f)).collect();
    UserPlaces { path: path.to_owned(), semaphores: vec![0; offsets.len()], offsets, returns }
}

fn counter() -> Tally {
    let config = TallyConfig { own_pid: std::process::id(), max_keys: 64, ..TallyConfig::default() };
    Tally::load(&config, TallyOn::UserProbe).unwrap()
}

/// Where this kernel has uprobe_multi links (Linux 6.6), this test's turn: the tests in this
/// file run one at a time (they share the fixtures' probes). Said when it has none.
fn links_here() -> Option<std::sync::MutexGuard<'static, ()>> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let each = fixture("tests/fixtures", "each");
    match counter().attach_user(&places(each, &["f0"], false)) {
        Ok(()) => Some(turn),
        Err(why) => {
            eprintln!("no uprobe_multi links on this kernel: {why}");
            None
        }
    }
}

#[test]
fn one_link_counts_every_place_of_a_probe_exactly_entries_and_returns() {
    let Some(_turn) = links_here() else { return };
    let each = fixture("tests/fixtures", "each");
    // f0 runs once, f1 twice, ... f4 five times.
    let mut entries = counter();
    entries.attach_user(&places(each, &["f0", "f1", "f2", "f3", "f4"], false)).unwrap();
    let mut returns = counter();
    returns.attach_user(&places(each, &["f3", "f4"], true)).unwrap();
    assert!(entries.linked() && returns.linked());
    assert!(Command::new(each).status().unwrap().success());
    assert_eq!(entries.counted(), 1 + 2 + 3 + 4 + 5);
    assert_eq!(entries.seen(), 15, "every hit, as the kernel counts an event's");
    assert_eq!(returns.counted(), 4 + 5);
    // Closed, it counts no more: its map, read through a clone of its reader, stays still.
    let rows = entries.reader();
    drop(entries);
    assert!(Command::new(each).status().unwrap().success());
    assert_eq!(rows.rows(0).unwrap().iter().map(|r| r.count).sum::<u64>(), 15);
    assert_eq!(returns.counted(), 2 * 9, "the other link still counts");
}

/// Where `file_offset` of `path` is mapped in process `pid`.
fn mapped_at(pid: u32, path: &str, file_offset: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(5) != Some(&path) {
                return None;
            }
            let (start, end) = fields[0].split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let offset = u64::from_str_radix(fields[2], 16).ok()?;
            (offset..offset + (end - start)).contains(&file_offset).then_some(start + file_offset - offset)
        })
        .expect("mapped")
}

#[test]
fn a_running_program_gets_its_code_back_when_the_link_closes() {
    let Some(_turn) = links_here() else { return };
    let prog = fixture("../cli/tests/fixtures", "waits_for_a_signal");
    let mut child = Command::new(prog).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let offset = file_offset(prog, "on_usr1");
    let mut original = [0u8; 1];
    std::fs::File::open(prog).unwrap().read_exact_at(&mut original, offset).unwrap();
    let mem = std::fs::File::open(format!("/proc/{}/mem", child.id())).unwrap();
    let code = || {
        let mut byte = [0u8; 1];
        mem.read_exact_at(&mut byte, mapped_at(child.id(), prog, offset)).unwrap();
        byte[0]
    };
    assert_eq!(code(), original[0]);
    let mut first = counter();
    first.attach_user(&places(prog, &["on_usr1"], false)).unwrap();
    assert_eq!(code(), 0xcc, "the kernel's breakpoint, in the running process");
    drop(first);
    assert_eq!(code(), original[0], "the original byte back");
    // Linked again, the program's one call is counted, and it runs on as untraced.
    let mut second = counter();
    second.attach_user(&places(prog, &["on_usr1"], false)).unwrap();
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    assert!(child.wait().unwrap().success());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "woken\n");
    assert_eq!(second.counted(), 1);
}
