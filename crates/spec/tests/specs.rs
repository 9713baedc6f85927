//! Probe specs: what parses to what, and every bad spec's specific message.
use dprobe_spec::*;

#[test]
fn user_function_with_typed_arguments() {
    let p = parse_probe("libc:openat path=+0($arg2):string flags=$arg3:x32 mode=$arg4:u16").unwrap();
    assert_eq!(p.point, ProbePoint::User { binary: Some("libc".into()), function: "openat".into(), offset: 0 });
    assert_eq!(p.kind, ProbeKind::Entry);
    assert_eq!(
        p.args,
        vec![
            NamedArg {
                name: "path".into(),
                fetch: Fetch::Deref { offset: 0, inner: Box::new(Fetch::Arg(2)) },
                ty: ArgType::String,
                typed: true
            },
            NamedArg::typed("flags", Fetch::Arg(3), ArgType::X(32)),
            NamedArg::typed("mode", Fetch::Arg(4), ArgType::U(16)),
        ]
    );
}

#[test]
fn return_probe_with_default_names_and_types() {
    let p = parse_probe("openat%return $retval $comm").unwrap();
    assert_eq!(p.point, ProbePoint::User { binary: None, function: "openat".into(), offset: 0 });
    assert_eq!(p.kind, ProbeKind::Return);
    assert_eq!(p.args[0], NamedArg { name: "ret".into(), fetch: Fetch::RetVal, ty: ArgType::S(64), typed: false });
    assert_eq!(p.args[1], NamedArg { name: "comm".into(), fetch: Fetch::Comm, ty: ArgType::String, typed: false });
}

#[test]
fn offsets_registers_and_nested_dereferences() {
    let p =
        parse_probe("./app:main+0x1c %rdi x=-8(+16(%bp)):s32 \\-1 @0x601040:u8 g=@+0x3010:s32 s=+0(@+0x3018):string")
            .unwrap();
    assert_eq!(p.point, ProbePoint::User { binary: Some("./app".into()), function: "main".into(), offset: 0x1c });
    assert_eq!(
        p.args[0],
        NamedArg { name: "di".into(), fetch: Fetch::Reg(Register("di")), ty: ArgType::X(64), typed: false }
    );
    assert_eq!(
        p.args[1].fetch,
        Fetch::Deref {
            offset: -8,
            inner: Box::new(Fetch::Deref { offset: 16, inner: Box::new(Fetch::Reg(Register("bp"))) })
        }
    );
    assert_eq!(p.args[1].ty, ArgType::S(32));
    assert_eq!(p.args[2].fetch, Fetch::Immediate(-1));
    assert_eq!(p.args[3], NamedArg::typed("arg4", Fetch::Memory(0x601040), ArgType::U(8)));
    assert_eq!(p.args[4], NamedArg::typed("g", Fetch::FileOffset(0x3010), ArgType::S(32)));
    assert_eq!(p.args[5].fetch, Fetch::Deref { offset: 0, inner: Box::new(Fetch::FileOffset(0x3018)) });
}

#[test]
fn cpp_names_keep_their_double_colons() {
    let p = parse_probe("./app:ns::Widget::draw+4").unwrap();
    assert_eq!(
        p.point,
        ProbePoint::User { binary: Some("./app".into()), function: "ns::Widget::draw".into(), offset: 4 }
    );
    let p = parse_probe("ns::free_function").unwrap();
    assert_eq!(p.point, ProbePoint::User { binary: None, function: "ns::free_function".into(), offset: 0 });
}

#[test]
fn kernel_functions_and_tracepoints() {
    let p = parse_probe("kernel:do_sys_openat2%return ret=$retval").unwrap();
    assert_eq!(p.point, ProbePoint::Kernel { function: "do_sys_openat2".into(), offset: 0 });
    assert_eq!(p.kind, ProbeKind::Return);
    let p = parse_probe("tracepoint:sched:sched_switch").unwrap();
    assert_eq!(p.point, ProbePoint::Tracepoint { subsystem: "sched".into(), event: "sched_switch".into() });
}

#[test]
fn versioned_symbols_and_addresses_are_function_names() {
    let p = parse_probe("libc:open@@GLIBC_2.2.5").unwrap();
    assert!(matches!(p.point, ProbePoint::User { ref function, .. } if function == "open@@GLIBC_2.2.5"));
    let p = parse_probe("/usr/bin/cat:0x2f40").unwrap();
    assert!(matches!(p.point, ProbePoint::User { ref function, .. } if function == "0x2f40"));
}

/// (spec, binary, function, offset): a `+` inside a library, a path or a C++ operator name is
/// part of the name; only a trailing `+NUMBER` is an offset.
const NAMES_WITH_PLUS: &[(&str, Option<&str>, &str, u64)] = &[
    ("libstdc++:__cxa_throw", Some("libstdc++"), "__cxa_throw", 0),
    ("libstdc++:__cxa_throw+4", Some("libstdc++"), "__cxa_throw", 4),
    ("/opt/g++-13/lib/libstdc++.so.6:__cxa_throw+0x10", Some("/opt/g++-13/lib/libstdc++.so.6"), "__cxa_throw", 0x10),
    ("./a+b/prog:main", Some("./a+b/prog"), "main", 0),
    ("operator+", None, "operator+", 0),
    ("./app:ns::operator+", Some("./app"), "ns::operator+", 0),
    ("ns::operator++", None, "ns::operator++", 0),
    ("ns::operator+=", None, "ns::operator+=", 0),
    ("operator++4", None, "operator+", 4),
    ("operator+++0x8", None, "operator++", 8),
    ("libc:open+12", Some("libc"), "open", 12),
    ("0x2f40+4", None, "0x2f40", 4),
];

#[test]
fn a_plus_in_a_name_is_part_of_it() {
    for &(text, binary, function, offset) in NAMES_WITH_PLUS {
        let p = parse_probe(text).unwrap_or_else(|e| panic!("`{text}`: {e}"));
        let want = ProbePoint::User { binary: binary.map(Into::into), function: function.into(), offset };
        assert_eq!(p.point, want, "`{text}`");
        assert_eq!(parse_point(text).unwrap(), want, "`{text}` alone");
    }
    let p = parse_probe("operator+%return").unwrap();
    assert_eq!(
        (p.point, p.kind),
        (ProbePoint::User { binary: None, function: "operator+".into(), offset: 0 }, ProbeKind::Return)
    );
    assert_eq!(parse_probe("kernel:f+0x20").unwrap().point, ProbePoint::Kernel { function: "f".into(), offset: 0x20 });
}

/// (spec, kind, the fragment the error points at, a phrase the message must contain)
const BAD: &[(&str, SpecErrorKind, &str, &str)] = &[
    ("", SpecErrorKind::Empty, "", "empty probe spec"),
    ("libc:", SpecErrorKind::MissingFunction, "libc:", "[BINARY:]FUNCTION"),
    (":openat", SpecErrorKind::MissingFunction, ":", "[BINARY:]FUNCTION"),
    ("openat+zz", SpecErrorKind::BadOffset, "zz", "`zz` is not an offset"),
    ("openat+", SpecErrorKind::BadOffset, "", "is not an offset"),
    ("openat+4%return", SpecErrorKind::OffsetOnReturn, "+4", "return probe cannot have an offset"),
    ("openat%ret", SpecErrorKind::UnknownSuffix, "%ret", "unknown suffix `%ret`"),
    ("tracepoint:", SpecErrorKind::MissingFunction, "tracepoint:", "SUBSYSTEM:EVENT"),
    ("tracepoint:sched", SpecErrorKind::BadTracepoint, "sched", "is not a tracepoint"),
    ("tracepoint:sched:switch%return", SpecErrorKind::TracepointModifier, "%return", "takes no offset or %return"),
    ("tracepoint:sched:sched_switch x=%di", SpecErrorKind::ArgsOnTracepoint, "x=%di", "take no fetch arguments"),
    ("kernel:", SpecErrorKind::MissingFunction, "kernel:", "kernel function"),
    ("openat x=%foo", SpecErrorKind::UnknownRegister, "%foo", "unknown register `%foo`"),
    ("openat path=+0(%foo):string", SpecErrorKind::UnknownRegister, "%foo", "expected a register"),
    ("openat $bogus", SpecErrorKind::UnknownVariable, "$bogus", "unknown variable"),
    ("openat $arg0", SpecErrorKind::BadArgIndex, "$arg0", "$arg1 .. $arg16"),
    ("openat $arg17", SpecErrorKind::BadArgIndex, "$arg17", "out of range"),
    ("openat $stack99", SpecErrorKind::BadArgIndex, "$stack99", "$stack0 .. $stack63"),
    ("openat ret=$retval", SpecErrorKind::RetvalOnEntry, "$retval", "only known at a function's return"),
    ("openat p=+0($arg2", SpecErrorKind::BadDereference, "+0($arg2", "closing parenthesis"),
    ("openat p=+x($arg2)", SpecErrorKind::BadDereference, "+x", "a number before the parenthesis"),
    ("openat p=+8", SpecErrorKind::BadDereference, "+8", "+OFFSET(FETCHARG)"),
    ("openat g=@main", SpecErrorKind::BadAddress, "@main", "not an address"),
    ("openat g=@+main", SpecErrorKind::BadAddress, "@+main", "an offset in the probed file"),
    ("openat k=\\abc", SpecErrorKind::BadImmediate, "\\abc", "not a number"),
    ("openat x=%di:u7", SpecErrorKind::UnknownType, "u7", "unknown type `u7`"),
    ("openat x=%di:str", SpecErrorKind::UnknownType, "str", "string"),
    ("openat x=$arg1:string:u8", SpecErrorKind::TwoTypes, "$arg1:string:u8", "has more than one type"),
    ("openat x=+0($arg1):string:string", SpecErrorKind::TwoTypes, "+0($arg1):string:string", "one :TYPE"),
    ("openat x=1di", SpecErrorKind::BadFetchArg, "1di", "not a fetch argument"),
    ("openat x=", SpecErrorKind::BadFetchArg, "", "not a fetch argument"),
    ("openat 9x=%di", SpecErrorKind::BadName, "9x", "not a valid argument name"),
    ("openat a=%di a=%si", SpecErrorKind::DuplicateName, "a", "used twice"),
    ("openat $arg1 $arg1", SpecErrorKind::DuplicateName, "$arg1", "used twice"),
    ("lines.c:47%return", SpecErrorKind::ReturnOnLine, ":47%return", "a source line has no return"),
    ("main:+3%return", SpecErrorKind::ReturnOnLine, ":+3%return", "FUNCTION%return"),
    ("./app:lines.c:0", SpecErrorKind::BadLine, "0", "line number from 1"),
];

#[test]
fn every_bad_spec_gets_its_specific_message() {
    assert!(BAD.len() >= 20);
    for (spec, kind, fragment, phrase) in BAD {
        let e = parse_probe(spec).expect_err(spec);
        assert_eq!(&e.kind, kind, "{spec}: {e}");
        assert_eq!(e.fragment(), *fragment, "{spec}: wrong span in\n{e}");
        let msg = e.to_string();
        assert!(msg.contains(phrase), "{spec}: message lacks `{phrase}`:\n{msg}");
        assert!(msg.contains(spec), "{spec}: the message quotes the spec:\n{msg}");
    }
}

#[test]
fn the_message_points_at_the_wrong_part() {
    let e = parse_probe("libc:openat path=+0(%foo):string").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad probe spec: unknown register `%foo`\n  libc:openat path=+0(%foo):string\n                      ^^^^ expected a register such as %di, %si, %dx, %cx, %ax, %ip, %sp, %r8"
    );
}

#[test]
fn static_probes_with_and_without_provider() {
    let p = parse_probe("usdt:./prog:app:req id=$arg1 name=+0($arg2):string").unwrap();
    assert_eq!(p.point, ProbePoint::Usdt { binary: "./prog".into(), provider: Some("app".into()), name: "req".into() });
    assert_eq!(p.args[0].fetch, Fetch::Arg(1));
    assert_eq!(p.args.iter().map(|a| a.typed).collect::<Vec<_>>(), [false, true]);
    let p = parse_probe("usdt:libc:setjmp").unwrap();
    assert_eq!(p.point, ProbePoint::Usdt { binary: "libc".into(), provider: None, name: "setjmp".into() });
    let p = parse_probe("usdt:/usr/bin/python3:python:function__*").unwrap();
    assert!(matches!(p.point, ProbePoint::Usdt { ref name, .. } if name == "function__*"));
    for (text, message) in [
        ("usdt:", "nothing after `usdt:`"),
        ("usdt:./prog", "`usdt:./prog` is not a static probe"),
        ("usdt:./prog:a:b:c", "`usdt:./prog:a:b:c` is not a static probe"),
        ("usdt::app:req", "is not a static probe"),
        ("usdt:./prog:app:req%return", "a static probe (usdt:) takes no offset or %return"),
        ("usdt:./prog:app:req+4", "a static probe (usdt:) takes no offset or %return"),
    ] {
        let e = parse_probe(text).unwrap_err().to_string();
        assert!(e.contains(message), "{text}: {e}");
    }
}

#[test]
fn source_lines_and_lines_relative_to_a_function() {
    let line = |spec: &str| parse_probe(spec).unwrap().point;
    let file = |b: Option<&str>, f: &str, l| ProbePoint::Line {
        binary: b.map(Into::into),
        line: SourceLine::File { file: f.into(), line: l },
    };
    let rel = |b: Option<&str>, f: &str, r| ProbePoint::Line {
        binary: b.map(Into::into),
        line: SourceLine::InFunction { function: f.into(), relative: r },
    };
    assert_eq!(line("./app:lines.c:47"), file(Some("./app"), "lines.c", 47));
    assert_eq!(line("app:src/lines.c:47 x=%di"), file(Some("app"), "src/lines.c", 47));
    assert_eq!(line("lines.c:47"), file(None, "lines.c", 47));
    assert_eq!(line("app:step:+4"), rel(Some("app"), "step", 4));
    assert_eq!(line("step:+0"), rel(None, "step", 0));
    assert_eq!(line("app:ns::Widget::draw:+2"), rel(Some("app"), "ns::Widget::draw", 2));
    // A `+` without a `:` is a byte offset, and an address is an address.
    assert_eq!(line("app:step+4"), ProbePoint::User { binary: Some("app".into()), function: "step".into(), offset: 4 });
    assert!(matches!(line("app:0x1150"), ProbePoint::User { ref function, .. } if function == "0x1150"));
    assert!(matches!(line("ns::f"), ProbePoint::User { ref function, .. } if function == "ns::f"));
    assert_eq!(SourceLine::InFunction { function: "step".into(), relative: 4 }.to_string(), "step:+4");
}

#[test]
fn variables_by_name_are_read_as_paths_with_their_given_types() {
    let p = parse_probe("prog:parse_request req len=req->hdr.len argv[1]:string $params").unwrap();
    let vars: Vec<(&str, &Fetch, ArgType, bool)> =
        p.args.iter().map(|a| (a.name.as_str(), &a.fetch, a.ty, a.typed)).collect();
    assert_eq!(vars[0], ("req", &Fetch::Var { path: "req".into() }, ArgType::X(64), false));
    assert_eq!(vars[1], ("len", &Fetch::Var { path: "req->hdr.len".into() }, ArgType::X(64), false));
    assert_eq!(vars[2], ("argv[1]", &Fetch::Var { path: "argv[1]".into() }, ArgType::String, true));
    assert_eq!((vars[3].1, vars[3].3), (&Fetch::Var { path: "$params".into() }, false));
}

#[test]
fn a_dereference_nests_as_deep_as_the_kernels_probes_evaluate() {
    let nested = |n: usize| format!("openat p={}$arg2{}", "+0(".repeat(n), ")".repeat(n));
    assert!(parse_probe(&nested(16)).is_ok());
    let spec = nested(17);
    let e = parse_probe(&spec).expect_err("17 levels");
    assert_eq!(e.kind, SpecErrorKind::DereferenceTooDeep, "{e}");
    assert!(e.to_string().contains("at most 16 dereferences"), "{e}");
}
