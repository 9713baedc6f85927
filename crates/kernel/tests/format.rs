//! Decoding records with format files captured from real kernels.
use dprobe_kernel::{EventFormat, FieldKind, FieldValue};

fn format(name: &str) -> EventFormat {
    let text = std::fs::read_to_string(format!("{}/tests/formats/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    EventFormat::parse(&text).unwrap()
}

/// A record: the four common fields, then `rest` at offset 8.
fn record(id: u16, pid: i32, rest: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&id.to_le_bytes());
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&pid.to_le_bytes());
    r.extend_from_slice(rest);
    r
}

fn value(f: &EventFormat, raw: &[u8], name: &str) -> FieldValue {
    f.decode(f.field(name).unwrap_or_else(|| panic!("field {name}")), raw).unwrap()
}

#[test]
fn sched_switch_chars_and_signed_integers() {
    let f = format("sched_switch");
    assert_eq!((f.name.as_str(), f.id), ("sched_switch", 372));
    let own: Vec<&str> = f.own_fields().map(|x| x.name.as_str()).collect();
    assert_eq!(own, ["prev_comm", "prev_pid", "prev_prio", "prev_state", "next_comm", "next_pid", "next_prio"]);
    assert_eq!(f.field("prev_comm").unwrap().kind, FieldKind::Chars);
    let mut rest = Vec::new();
    rest.extend_from_slice(b"bash\0\0\0\0\0\0\0\0\0\0\0\0");
    rest.extend_from_slice(&1234i32.to_le_bytes());
    rest.extend_from_slice(&120i32.to_le_bytes());
    rest.extend_from_slice(&(-1i64).to_le_bytes());
    rest.extend_from_slice(b"swapper/1\0\0\0\0\0\0\0");
    rest.extend_from_slice(&0i32.to_le_bytes());
    rest.extend_from_slice(&(-100i32).to_le_bytes());
    let raw = record(372, 1234, &rest);
    assert_eq!(value(&f, &raw, "prev_comm"), FieldValue::Str(b"bash".to_vec()));
    assert_eq!(value(&f, &raw, "prev_pid"), FieldValue::Signed(1234));
    assert_eq!(value(&f, &raw, "prev_state"), FieldValue::Signed(-1));
    assert_eq!(value(&f, &raw, "next_comm"), FieldValue::Str(b"swapper/1".to_vec()));
    assert_eq!(value(&f, &raw, "next_prio"), FieldValue::Signed(-100));
    assert_eq!(value(&f, &raw, "common_pid"), FieldValue::Signed(1234));
}

#[test]
fn syscall_exit_return_values_are_signed() {
    let f = format("sys_exit_openat");
    let own: Vec<&str> = f.own_fields().map(|x| x.name.as_str()).collect();
    assert_eq!(own, ["__syscall_nr", "ret"]);
    let mut rest = Vec::new();
    rest.extend_from_slice(&257i32.to_le_bytes());
    rest.extend_from_slice(&[0; 4]); // padding: ret is at 16
    rest.extend_from_slice(&(-2i64).to_le_bytes());
    let raw = record(f.id as u16, 7, &rest);
    assert_eq!(value(&f, &raw, "ret"), FieldValue::Signed(-2));
    let f = format("sys_enter_openat");
    assert_eq!(f.field("filename").unwrap().kind, FieldKind::Int { signed: false }, "a user pointer");
}

#[test]
fn uprobe_events_with_data_loc_strings_and_narrow_integers() {
    let f = format("uprobe_strings");
    let own: Vec<(&str, usize)> = f.own_fields().map(|x| (x.name.as_str(), x.offset)).collect();
    assert_eq!(own, [("x", 16), ("c", 24), ("s", 28), ("n", 32), ("h", 34)]);
    assert_eq!(f.field("c").unwrap().kind, FieldKind::DataLocString);
    let mut raw = record(f.id as u16, 99, &[0; 8]); // __probe_ip
    raw.extend_from_slice(&(-5i64).to_le_bytes()); // x at 16
    let strings_at = 38u32;
    raw.extend_from_slice(&(strings_at | (4 << 16)).to_le_bytes()); // c: "cat\0"
    raw.extend_from_slice(&((strings_at + 4) | (11 << 16)).to_le_bytes()); // s: "/etc/hosts\0"
    raw.extend_from_slice(&0xbeefu16.to_le_bytes());
    raw.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    raw.extend_from_slice(b"cat\0/etc/hosts\0");
    assert_eq!(value(&f, &raw, "x"), FieldValue::Signed(-5));
    assert_eq!(value(&f, &raw, "c"), FieldValue::Str(b"cat".to_vec()));
    assert_eq!(value(&f, &raw, "s"), FieldValue::Str(b"/etc/hosts".to_vec()));
    assert_eq!(value(&f, &raw, "n"), FieldValue::Unsigned(0xbeef));
    assert_eq!(value(&f, &raw, "h"), FieldValue::Unsigned(0xdead_beef));
    let short = &raw[..20];
    assert_eq!(f.decode(f.field("s").unwrap(), short), None, "a truncated record is not read past its end");
}

#[test]
fn return_probe_events() {
    let f = format("uretprobe");
    let own: Vec<&str> = f.own_fields().map(|x| x.name.as_str()).collect();
    assert_eq!(own, ["ret"]);
    assert_eq!(f.field("ret").unwrap().kind, FieldKind::Int { signed: true });
    assert_eq!(f.field("ret").unwrap().size, 4);
    let mut raw = record(f.id as u16, 1, &[0; 16]);
    raw.extend_from_slice(&(-1i32).to_le_bytes());
    assert_eq!(value(&f, &raw, "ret"), FieldValue::Signed(-1));
}

#[test]
fn kprobe_events() {
    // Captured from Debian's 6.1 kernel (kprobe events built in), booted by the kprobe VM
    // test (`.ci/kprobe-vm`).
    let f = format("kprobe_openat2");
    let own: Vec<(&str, FieldKind)> = f.own_fields().map(|x| (x.name.as_str(), x.kind)).collect();
    assert_eq!(own, [("dfd", FieldKind::Int { signed: true }), ("path", FieldKind::DataLocString)]);
    let mut raw = record(f.id as u16, 88, &0xffff_ffff_8130_0000u64.to_le_bytes());
    raw.extend_from_slice(&(-100i32).to_le_bytes()); // dfd at 16: AT_FDCWD
    raw.extend_from_slice(&(24u32 | (10 << 16)).to_le_bytes()); // path at 20
    raw.extend_from_slice(b"/etc/motd\0");
    assert_eq!(value(&f, &raw, "dfd"), FieldValue::Signed(-100));
    assert_eq!(value(&f, &raw, "path"), FieldValue::Str(b"/etc/motd".to_vec()));
    let f = format("kretprobe_openat2");
    let own: Vec<&str> = f.own_fields().map(|x| x.name.as_str()).collect();
    assert_eq!(own, ["ret"]);
    let mut raw = record(f.id as u16, 88, &[0; 16]);
    raw.extend_from_slice(&(-2i64).to_le_bytes());
    assert_eq!(value(&f, &raw, "ret"), FieldValue::Signed(-2));
}

#[test]
fn bad_format_files_are_errors() {
    assert!(EventFormat::parse("name: x\nformat:\n").is_err(), "no ID");
    assert!(EventFormat::parse("ID: 1\n").is_err(), "no name");
    assert!(EventFormat::parse("name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n").is_err());
}
