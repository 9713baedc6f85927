//! Filters: parsing, errors, evaluation.
use dprobe_spec::*;

fn eval(f: &Filter, ret: i64, path: &'static str) -> bool {
    f.matches(&|name| match name {
        "ret" => Some(Value::Int(ret)),
        "path" => Some(Value::Str(path.as_bytes())),
        _ => None,
    })
}

#[test]
fn comparisons_and_logic() {
    let fields = ["ret", "path"];
    let f = parse_filter("ret < 0", &fields).unwrap();
    assert_eq!(f, Filter::Cmp { field: "ret".into(), op: CmpOp::Lt, value: Literal::Int(0) });
    assert!(eval(&f, -2, "") && !eval(&f, 3, ""));
    let f = parse_filter("ret >= 0 && path ~ \"/etc/*\"", &fields).unwrap();
    assert!(eval(&f, 3, "/etc/hostname"));
    assert!(!eval(&f, 3, "/usr/lib"));
    assert!(!eval(&f, -1, "/etc/hostname"));
    let f = parse_filter("!(ret == -2) || path == \"x\"", &fields).unwrap();
    assert!(eval(&f, 0, "") && !eval(&f, -2, "") && eval(&f, -2, "x"));
    let f = parse_filter("ret != 0x10 && ret > -5", &fields).unwrap();
    assert!(eval(&f, 0, "") && !eval(&f, 16, "") && !eval(&f, -9, ""));
    assert_eq!(parse_filter("path ~ \"a?c\"", &fields).unwrap().fields(), vec!["path"]);
}

#[test]
fn bad_filters_point_at_the_wrong_part() {
    let fields = ["ret", "path"];
    let cases: &[(&str, SpecErrorKind, &str)] = &[
        ("", SpecErrorKind::BadFilter, ""),
        ("errno < 0", SpecErrorKind::UnknownField, "errno"),
        ("ret <", SpecErrorKind::BadFilter, "<"),
        ("ret 0", SpecErrorKind::BadFilter, "0"),
        ("ret < 0 &&", SpecErrorKind::BadFilter, "&"),
        ("(ret < 0", SpecErrorKind::BadFilter, "0"),
        ("ret < 0 ret", SpecErrorKind::BadFilter, "ret"),
        ("path ~ 3", SpecErrorKind::BadFilter, "3"),
        ("path == \"open", SpecErrorKind::BadFilter, "\"open"),
        ("ret < 0x", SpecErrorKind::BadFilter, "0x"),
        ("ret # 1", SpecErrorKind::BadFilter, "#"),
    ];
    for (text, kind, fragment) in cases {
        let e = parse_filter(text, &fields).expect_err(text);
        assert_eq!(&e.kind, kind, "{text}: {e}");
        assert_eq!(e.fragment(), *fragment, "{text}:\n{e}");
    }
    let e = parse_filter("errno < 0", &fields).unwrap_err();
    assert!(e.to_string().contains("one of the fetched arguments: ret, path"), "{e}");
}
