//! Variables by name at a probe address: where each is fetched from, for gcc and clang at
//! -O0 and -O2, and the messages for names that cannot be fetched.
mod common;

use std::path::PathBuf;

use common::*;
use dprobe_dwarf::{fetch_text, place_vars, DebugInfo, Request, Search, Shown};
use dprobe_spec::Fetch;

const VARS: &str = include_str!("fixtures/vars.c");

fn build(compiler: &str, opt: &str) -> PathBuf {
    let dir = temp_dir(&format!("vars-{compiler}-{opt}"));
    compile(compiler, VARS, &dir, "vars", &["-g", opt])
}

fn load(bin: &PathBuf) -> DebugInfo {
    let s = Search { debug_root: bin.parent().unwrap().join("root"), debuginfod_cache: None };
    DebugInfo::load_with(bin, &s).unwrap().expect("DWARF")
}

fn req(path: &str) -> Request {
    Request { path: path.into(), name: path.into(), ty: None }
}

fn texts(placed: &dprobe_dwarf::Placed) -> Vec<String> {
    placed.args.iter().map(|a| format!("{}={}:{:?}", a.name, fetch_text(&a.fetch), a.ty)).collect()
}

/// At -O2 both compilers leave the parameters in the registers of the calling convention at
/// the entry (location lists valid there): the probe stays at the entry, members and
/// elements are read through them, `char *` as strings, enums with their enumerators.
#[test]
fn optimized_code_reads_parameters_from_their_registers_at_the_entry() {
    for cc in ["gcc", "clang"] {
        let info = load(&build(cc, "-O2"));
        let asked = ["req->hdr.len", "len", "name", "req->hdr.tag", "req->codes[2]", "req->method", "req->urgent"];
        let placed = place_vars(&info, "parse_request", None, &asked.map(req)).unwrap();
        assert_eq!(placed.offset, 0, "{cc}");
        assert_eq!(
            texts(&placed),
            [
                "req->hdr.len=+8(%di):U(32)",
                "len=%si:S(32)",
                "name=+0(%dx):String",
                "req->hdr.tag=+14(%di):String",
                "req->codes[2]=+48(%di):S(32)",
                "req->method=+24(%di):S(32)",
                "req->urgent=+56(%di):U(8)",
            ],
            "{cc}"
        );
        let method = &placed.args[5].shown;
        assert_eq!(method, &Shown::Enum(vec![(1, "GET".into()), (2, "POST".into()), (-3, "PURGE".into())]));
        assert_eq!(placed.args[6].shown, Shown::Bool);
        let argv = place_vars(&info, "count_args", None, &[req("argv[1]")]).unwrap();
        assert_eq!(texts(&argv), ["argv[1]=+0(+8(%si)):String"], "{cc}");
        // `*p` reads what p points to, as C does: `*argv` is `argv[0]`, `**argv` its first
        // character, `*req->hdr.tag` the tag's first character.
        let deref = ["*argv", "argv[0]", "**argv"].map(req);
        let deref = place_vars(&info, "count_args", None, &deref).unwrap();
        assert_eq!(
            texts(&deref),
            ["*argv=+0(+0(%si)):String", "argv[0]=+0(+0(%si)):String", "**argv=+0(+0(%si)):S(8)"],
            "{cc}"
        );
        let tag = place_vars(&info, "parse_request", None, &[req("*req->hdr.tag"), req("*req")]);
        assert!(tag.is_err(), "{cc}: *req is a struct");
        let tag = place_vars(&info, "parse_request", None, &[req("*req->hdr.tag")]).unwrap();
        assert_eq!(texts(&tag), ["*req->hdr.tag=+14(%di):S(8)"], "{cc}");
        let all = place_vars(&info, "mix", None, &[req("$params")]).unwrap();
        assert_eq!(texts(&all), ["seed=%di:U(64)", "rounds=%si:S(32)", "step=%dx:S(8)"], "{cc}");
    }
}

/// At -O0 the parameters are copied to stack slots by the prologue and the DWARF names only
/// the slots: the probe moves past the prologue (to the function's second line-table row)
/// and reads them relative to the frame.
#[test]
fn unoptimized_code_is_probed_after_the_prologue_in_the_frame() {
    for cc in ["gcc", "clang"] {
        let info = load(&build(cc, "-O0"));
        let f = info.function("parse_request").unwrap().unwrap();
        let placed = place_vars(&info, "parse_request", None, &[req("len"), req("req->hdr.len")]).unwrap();
        assert!(placed.offset > 0, "{cc}: moved");
        assert_eq!(f.low_pc + placed.offset, f.after_prologue().unwrap());
        for a in &placed.args {
            let text = fetch_text(&a.fetch);
            assert!(text.ends_with("(%bp))") || text.ends_with("(%bp)"), "{cc}: {text}");
        }
    }
}

/// gcc's frame base is the canonical frame address: at the entry, from `.eh_frame`, it is
/// `%sp + 8`, so a slot at `DW_OP_fbreg N` is read at `N+8(%sp)` there.
#[test]
fn the_frame_base_comes_from_the_call_frame_information() {
    let info = load(&build("gcc", "-O0"));
    let at_entry = place_vars(&info, "parse_request", Some(0), &[req("len")]).unwrap();
    let inside = place_vars(&info, "parse_request", None, &[req("len")]).unwrap();
    let (Fetch::Deref { offset: entry_off, inner: entry_base }, Fetch::Deref { offset: body_off, inner: body_base }) =
        (&at_entry.args[0].fetch, &inside.args[0].fetch)
    else {
        panic!("stack slots: {at_entry:?} {inside:?}")
    };
    assert_eq!(**entry_base, Fetch::Reg(dprobe_spec::Register("sp")));
    assert_eq!(**body_base, Fetch::Reg(dprobe_spec::Register("bp")));
    // The CFA is %sp+8 at the entry and %bp+16 once the frame is set up: the same slot.
    assert_eq!(entry_off - 8, body_off - 16);
}
