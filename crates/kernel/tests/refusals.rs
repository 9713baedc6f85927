//! What the kernel refuses to uprobe is refused before anything is placed, with the reason
//! (the definitions only read the program; nothing touches tracefs).
use dprobe_kernel::definition;
use dprobe_spec::parse_probe;

fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/refused.c");
    dprobe_test_fixtures::c_program(src, "refused", &["-O2"])
}

#[test]
fn instructions_the_kernel_refuses_are_refused_with_the_reason() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let optimizes_nop5 = (v.next().unwrap(), v.next().unwrap()) >= (6, 18);
    let cases: &[(&str, Option<&str>)] = &[
        ("vex_first", Some("VEX/EVEX-encoded")),
        ("lock_first", Some("`lock`-prefixed")),
        ("vpcmpeqb_first", Some("(opcode 0x74) for a conditional jump and skip it")),
        ("evex_broadcast_first", Some("(opcode 0x7a) for a conditional jump and skip it")),
        ("kmov_second+4", Some("(opcode 0x90) for a nop and skip it")),
        ("fma_first", Some("(opcode 0x9d) for popf")),
        ("kmov_second", None),
        ("red_zone_nop+4", optimizes_nop5.then_some("red zone")),
        ("red_zone_nop", None),
        ("plain", None),
    ];
    for (place, refusal) in cases {
        let result = definition(&parse_probe(&format!("{}:{place}", program())).unwrap());
        match (refusal, result) {
            (None, Ok(_)) => {}
            (Some(why), Err(e)) => assert!(e.to_string().contains(why), "{place}: {e}"),
            (expected, got) => panic!("{place}: expected {expected:?}, got {got:?}"),
        }
    }
}
