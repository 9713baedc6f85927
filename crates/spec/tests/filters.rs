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

#[test]
fn inputs_that_nest_without_end_are_refused_not_a_stack_overflow() {
    let fields = ["ret", "path"];
    let many = |unit: &str, n: usize, inner: &str, close: &str| format!("{}{inner}{}", unit.repeat(n), close.repeat(n));
    let cases: Vec<(String, SpecErrorKind, usize)> = vec![
        (many("(", 60_000, "ret < 0", ")"), SpecErrorKind::FilterTooDeep, MAX_FILTER_DEPTH),
        (many("!", 100_000, "ret < 0", ""), SpecErrorKind::FilterTooDeep, MAX_FILTER_DEPTH),
        (many("!(", 30_000, "ret < 0", ")"), SpecErrorKind::FilterTooDeep, MAX_FILTER_DEPTH),
        (
            vec!["ret < 0"; 100_000].join(" && "),
            SpecErrorKind::FilterTooLong,
            MAX_FILTER_COMPARISONS * "ret < 0 && ".len(),
        ),
        (
            vec!["ret < 0"; 100_000].join(" || "),
            SpecErrorKind::FilterTooLong,
            MAX_FILTER_COMPARISONS * "ret < 0 || ".len(),
        ),
    ];
    for (text, kind, at) in &cases {
        let e = parse_filter(text, &fields).expect_err(&text[..20]);
        assert_eq!(&e.kind, kind, "{}", &text[..20]);
        // The error points at the first token past the bound.
        assert_eq!(e.span.start, *at, "{}", &text[..20]);
        assert!(e.to_string().starts_with("bad filter: the filter "), "{}", e.to_string().lines().next().unwrap());
    }
    // At the bounds, filters parse and evaluate.
    let f = parse_filter(&many("(", MAX_FILTER_DEPTH, "ret < 0", ")"), &fields).unwrap();
    assert!(eval(&f, -1, "") && !eval(&f, 1, ""));
    let f = parse_filter(&many("!", MAX_FILTER_DEPTH, "ret < 0", ""), &fields).unwrap();
    assert!(eval(&f, -1, "") && !eval(&f, 1, ""), "an even number of `!`");
    let f = parse_filter(&vec!["ret < 0"; MAX_FILTER_COMPARISONS].join(" && "), &fields).unwrap();
    assert!(eval(&f, -1, "") && !eval(&f, 1, ""));
}

#[test]
fn a_glob_with_many_stars_matches_a_long_path() {
    let f = parse_filter("path ~ \"*a*a*a*a*a*a*a*a*b\"", &["path"]).unwrap();
    let path: &'static str = "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(path.len(), 40);
    assert!(!eval(&f, 0, path));
    assert!(eval(&f, 0, "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"));
}
