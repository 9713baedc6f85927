//! Every exit of a function, on hand-assembled code and on what gcc and clang emit at -O2.
use std::path::{Path, PathBuf};
use std::process::Command;

use dprobe_arch::*;
use object::{Object, ObjectSection, ObjectSymbol};

mod common;
use common::FlatMemory;

const F: Addr = Addr(0x40_1000);

fn body(code: &[u8]) -> Result<Exits, ExitsUnknown> {
    find_exits(&[CodePart { start: F, code }], &mut FlatMemory::new(0, 0))
}

fn kinds(exits: &Exits) -> Vec<(u64, ExitKind)> {
    exits.sites.iter().map(|s| (s.addr.0 - F.0, s.kind)).collect()
}

#[test]
fn every_ret_and_every_branch_out_of_the_function_is_an_exit() {
    let code = [
        0x85, 0xff, // +0  test %edi,%edi
        0x0f, 0x84, 0x00, 0x01, 0x00, 0x00, // +2  je F+0x108 (outside: a conditional tail call)
        0x83, 0xff, 0x01, // +8  cmp $1,%edi
        0x75, 0x01, // +11 jne +16 (inside)
        0xc3, // +13 ret
        0x90, 0x90, // +14 nop; nop
        0x83, 0xff, 0x02, // +16 cmp $2,%edi
        0x74, 0x05, // +19 je +26 (inside)
        0xe9, 0x00, 0x02, 0x00, 0x00, // +21 jmp F+0x21a (outside: a tail call)
        0xc2, 0x08, 0x00, // +26 ret $8
        0xff, 0x25, 0x10, 0x00, 0x00, 0x00, // +29 jmp *0x10(%rip): through a GOT entry
    ];
    let exits = body(&code).unwrap();
    assert_eq!(
        kinds(&exits),
        [
            (2, ExitKind::TailBranch { target: F.offset(0x108) }),
            (13, ExitKind::Ret),
            (21, ExitKind::TailJump { target: F.offset(0x21a) }),
            (26, ExitKind::Ret),
            (29, ExitKind::TailJumpThrough { slot: F.offset(35 + 0x10) }),
        ]
    );
    assert_eq!(exits.jump_tables, 0);
    assert_eq!(exits.at(F.offset(13)), Some(ExitKind::Ret));
    assert_eq!(exits.at(F.offset(8)), None);
}

#[test]
fn a_jump_into_the_functions_cold_part_is_not_an_exit_and_the_cold_parts_exits_are() {
    let cold_at = F.offset(0x800);
    // Body: test %edi,%edi; jne cold; ret
    let code = [0x85, 0xff, 0x0f, 0x85, 0xf8, 0x07, 0x00, 0x00, 0xc3];
    // Cold: mov $-1,%eax; ret
    let cold = [0xb8, 0xff, 0xff, 0xff, 0xff, 0xc3];
    let alone = body(&code).unwrap();
    assert_eq!(kinds(&alone), [(2, ExitKind::TailBranch { target: cold_at }), (8, ExitKind::Ret)]);
    let parts = [CodePart { start: F, code: &code }, CodePart { start: cold_at, code: &cold }];
    let merged = find_exits(&parts, &mut FlatMemory::new(0, 0)).unwrap();
    assert_eq!(kinds(&merged), [(8, ExitKind::Ret), (0x805, ExitKind::Ret)]);
}

#[test]
fn an_indirect_jump_that_is_no_jump_table_makes_the_exits_unknown() {
    // push %rbp; pop %rbp; jmp *%rax
    let err = body(&[0x55, 0x5d, 0xff, 0xe0]).unwrap_err();
    assert_eq!(err, ExitsUnknown::IndirectJump { at: F.offset(2), offset: 2, text: "jmp *%rax".into() });
    assert_eq!(err.to_string(), "`jmp *%rax` at +0x2 is an indirect jump whose targets cannot be bounded");
}

#[test]
fn the_end_of_an_eh_return_is_no_exit_to_watch_and_a_like_jump_without_the_stack_load_is_unknown() {
    let code = [
        0x48, 0x85, 0xc0, // +0  test %rax,%rax
        0x74, 0x01, // +3  je +6
        0xc3, // +5  ret (no handler found: the error code goes back)
        0x48, 0x8d, 0x4c, 0x0d, 0x08, // +6  lea 0x8(%rbp,%rcx),%rcx
        0x48, 0x8b, 0x5d, 0xd8, // +11 mov -0x28(%rbp),%rbx
        0x48, 0x89, 0xcc, // +15 mov %rcx,%rsp
        0x59, // +18 pop %rcx
        0xff, 0xe1, // +19 jmp *%rcx (to the handler, on the frame above)
    ];
    let exits = body(&code).unwrap();
    assert_eq!(kinds(&exits), [(5, ExitKind::Ret)], "the jump to the handler leaves as longjmp does");
    // The same jump after `pop` alone (no new stack pointer): unbounded.
    let mut no_load = code;
    no_load[15..18].copy_from_slice(&[0x48, 0x89, 0xc8]); // mov %rcx,%rax
    assert!(matches!(body(&no_load), Err(ExitsUnknown::IndirectJump { .. })));
    // A different register popped than jumped through: unbounded.
    let mut other = code;
    other[18] = 0x58; // pop %rax
    assert!(matches!(body(&other), Err(ExitsUnknown::IndirectJump { .. })));
    // A branch to the `pop` (reached without the new stack pointer): unbounded.
    let mut landed = code;
    landed[4] = 0x0d; // je +18, the pop
    assert!(matches!(body(&landed), Err(ExitsUnknown::IndirectJump { .. })));
}

#[test]
fn code_running_off_the_end_an_int3_or_no_bounds_make_the_exits_unknown() {
    // mov %edi,%eax; nop: it goes on into whatever follows.
    assert!(matches!(body(&[0x89, 0xf8, 0x90]), Err(ExitsUnknown::FallsOffEnd { offset: 0, .. })));
    // A call as the last instruction is a call that does not return (__stack_chk_fail).
    assert_eq!(kinds(&body(&[0xc3, 0xe8, 0, 0, 0, 0]).unwrap()), [(0, ExitKind::Ret)]);
    assert_eq!(body(&[0x90, 0xcc, 0xc3]), Err(ExitsUnknown::ForeignBreakpoint { at: F.offset(1), offset: 1 }));
    assert_eq!(body(&[]), Err(ExitsUnknown::UnknownBounds));
    assert!(matches!(body(&[0x90, 0x0f, 0x0b, 0xc3, 0x0f]), Err(ExitsUnknown::Undecodable { offset: 4, .. })));
}

/// A gcc-style position-independent switch at `F` bounded by `cmp $cmp`, whose table at
/// `TABLE` holds `entries` (offsets from the table).
fn pic_switch(cmp: u8, entries: &[i32]) -> (Vec<u8>, FlatMemory) {
    const TABLE: u64 = 0x40_2000;
    let lea_at = F.0 + 5;
    let disp = (TABLE - (lea_at + 7)) as u32;
    let mut code = vec![
        0x83, 0xff, cmp, // cmp $cmp,%edi
        0x77, 0x12, // ja +0x17 (the ret)
        0x48, 0x8d, 0x15, // lea TABLE(%rip),%rdx
    ];
    code.extend(disp.to_le_bytes());
    code.extend([
        0x89, 0xff, // mov %edi,%edi
        0x48, 0x63, 0x04, 0xba, // movslq (%rdx,%rdi,4),%rax
        0x48, 0x01, 0xd0, // add %rdx,%rax
        0xff, 0xe0, // jmp *%rax
        0xc3, // +0x17 ret
        0x31, 0xc0, 0xc3, // +0x18 xor %eax,%eax; ret
    ]);
    let mut data = FlatMemory::new(TABLE, 64);
    for (k, e) in entries.iter().enumerate() {
        data.bytes[4 * k..4 * k + 4].copy_from_slice(&e.to_le_bytes());
    }
    (code, data)
}

#[test]
fn a_bounded_jump_table_whose_entries_stay_inside_is_followed() {
    const TABLE: i64 = 0x40_2000;
    let to = |off: i64| (F.0 as i64 + off - TABLE) as i32;
    let (code, mut data) = pic_switch(2, &[to(0x17), to(0x18), to(0x17), to(0x1000)]);
    let exits = find_exits(&[CodePart { start: F, code: &code }], &mut data).unwrap();
    assert_eq!(exits.jump_tables, 1, "3 entries (cmp $2; ja), the fourth is not part of the table");
    assert_eq!(kinds(&exits), [(0x17, ExitKind::Ret), (0x1a, ExitKind::Ret)]);
    // With cmp $3, the fourth entry is in the table, and it leaves the function.
    let (code, mut data) = pic_switch(3, &[to(0x17), to(0x18), to(0x17), to(0x1000)]);
    let err = find_exits(&[CodePart { start: F, code: &code }], &mut data).unwrap_err();
    assert!(matches!(err, ExitsUnknown::IndirectJump { offset: 0x15, .. }), "{err:?}");
    // Without its bound (the cmp replaced by nops) the table's size is unknown.
    let (mut code, mut data) = pic_switch(2, &[to(0x17), to(0x18), to(0x17)]);
    code[..5].copy_from_slice(&[0x90; 5]);
    let err = find_exits(&[CodePart { start: F, code: &code }], &mut data).unwrap_err();
    assert!(matches!(err, ExitsUnknown::IndirectJump { offset: 0x15, .. }), "{err:?}");
}

const SOURCE: &str = r#"
volatile int sink;
__attribute__((noinline)) int inner(int x) { sink = x; return x * 3 + 1; }
int outer(int x) { return inner(x + 1); }
int multi(const int *p, int n) {
    if (!p) return -1;
    for (int i = 0; i < n; i++) if (p[i] == 42) return i;
    sink = n;
    return n * 2;
}
int sw(int x) {
    switch (x) {
    case 0: sink = 10; return inner(3);
    case 1: sink = 11; return 7;
    case 2: sink = 12; return inner(x * 5);
    case 3: sink = 13; return 8;
    case 4: sink = 14; return x + sink;
    case 5: sink = 15; return 9;
    case 6: sink = 16; return inner(1);
    default: return -1;
    }
}
"#;

/// A shared object built from [`SOURCE`] by `compiler -O2`.
fn build(compiler: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dprobe-arch-exits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("exits.c");
    std::fs::write(&src, SOURCE).unwrap();
    let out = dir.join(format!("{compiler}.so"));
    let status = Command::new(compiler).args(["-O2", "-shared", "-fPIC", "-o"]).arg(&out).arg(&src).status().unwrap();
    assert!(status.success(), "{compiler} failed");
    out
}

/// The file's sections at their link-time addresses: the jump tables' memory.
fn sections(file: &object::File<'_>) -> FlatMemory {
    let end = file.sections().map(|s| s.address() + s.size()).max().unwrap();
    let mut mem = FlatMemory::new(0, end as usize);
    for s in file.sections() {
        if let Ok(data) = s.data() {
            if !data.is_empty() {
                mem.bytes[s.address() as usize..s.address() as usize + data.len()].copy_from_slice(data);
            }
        }
    }
    mem
}

fn exits_of(path: &Path, name: &str) -> Exits {
    let bytes = std::fs::read(path).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let mut mem = sections(&file);
    let code = |sym: &str| {
        let s = file.symbols().find(|s| s.name() == Ok(sym))?;
        let start = s.address() as usize;
        Some((Addr(s.address()), mem.bytes[start..start + s.size() as usize].to_vec()))
    };
    let mut parts = vec![code(name).unwrap()];
    parts.extend(code(&format!("{name}.cold")));
    let parts: Vec<_> = parts.iter().map(|(start, code)| CodePart { start: *start, code }).collect();
    find_exits(&parts, &mut mem).unwrap()
}

fn count(exits: &Exits, pick: fn(&ExitKind) -> bool) -> usize {
    exits.sites.iter().filter(|s| pick(&s.kind)).count()
}

#[test]
fn gcc_and_clang_at_o2_every_ret_every_tail_call_and_a_jump_table() {
    for compiler in ["gcc", "clang"] {
        let so = build(compiler);
        let outer = exits_of(&so, "outer");
        assert_eq!(outer.sites.len(), 1, "{compiler}: {outer:?}");
        assert!(matches!(outer.sites[0].kind, ExitKind::TailJump { .. }), "{compiler}: {outer:?}");
        let multi = exits_of(&so, "multi");
        assert_eq!((multi.sites.len(), count(&multi, |k| k.is_ret())), (3, 3), "{compiler}: {multi:?}");
        let sw = exits_of(&so, "sw");
        assert_eq!(sw.jump_tables, 1, "{compiler}");
        assert_eq!(count(&sw, |k| k.is_ret()), 5, "{compiler}: 4 cases and the default return: {sw:?}");
        assert_eq!(count(&sw, |k| matches!(k, ExitKind::TailJump { .. })), 3, "{compiler}: 3 cases tail-call: {sw:?}");
        assert_eq!(sw.sites.len(), 8, "{compiler}: {sw:?}");
    }
}
