//! The call-path program the stack tests probe (`calls.c`, and `calls.rs` in Rust): `leaf` is
//! called through `main → top → mid → leaf` and `main → other → leaf`, so every stack at it
//! is one of two known paths. Its builds, and how a test reads stacks back from a trace.

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.c");
const RUST_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calls.rs");

/// One build of the call-path program, and how its functions are named.
pub struct Program {
    pub path: &'static str,
    /// The names of `leaf`, `mid`, `top`, `other` and `main` in the stacks and the specs.
    pub leaf: &'static str,
    pub mid: &'static str,
    pub top: &'static str,
    pub other: &'static str,
    pub main: &'static str,
}

/// The C build, with or without frame pointers (without: only the call-frame information
/// unwinds it).
pub fn c_program(name: &'static str, frame_pointers: bool) -> Program {
    let fp = if frame_pointers { "-fno-omit-frame-pointer" } else { "-fomit-frame-pointer" };
    let path = dprobe_test_fixtures::c_program(SOURCE, name, &["-O2", "-g", "-pthread", fp]);
    Program { path, leaf: "leaf", mid: "mid", top: "top", other: "other", main: "main" }
}

/// The Rust build, without frame pointers.
pub fn rust_program() -> Program {
    let flags = ["-O", "-g", "-C", "force-frame-pointers=no", "--crate-name", "calls"];
    let path = dprobe_test_fixtures::c_program_by("rustc", RUST_SOURCE, "calls_rs", &flags);
    Program {
        path,
        leaf: "calls::leaf",
        mid: "calls::mid",
        top: "calls::top",
        other: "calls::other",
        main: "calls::main",
    }
}

/// The functions of a JSON event's user stack that hold code (inlined calls and kernel frames
/// left out), innermost first, up to the program's `main`.
pub fn path_to_main(event: &serde_json::Value, main: &str) -> Vec<String> {
    let mut path = Vec::new();
    for frame in event["stack"].as_array().expect("a stack") {
        if frame["inlined"] == true || frame["kernel"] == true {
            continue;
        }
        let name = frame["function"].as_str().unwrap_or("?").to_owned();
        let done = name == main;
        path.push(name);
        if done {
            break;
        }
    }
    path
}

/// The events of a JSON trace, by function.
pub fn events<'a>(trace: &'a str, function: &'a str) -> impl Iterator<Item = serde_json::Value> + 'a {
    trace
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(move |e| e["function"] == function)
}

/// The folded lines from `main` on (the frames below it, in the C library's start code,
/// differ between systems): `(path, count)`, sorted.
pub fn folded_from_main(text: &str, main: &str) -> Vec<(String, u64)> {
    let mut lines: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let (stack, count) = l.rsplit_once(' ').expect("`stack count`");
            let from = stack.split(';').position(|f| f == main).expect("main in every stack");
            (stack.split(';').skip(from).collect::<Vec<_>>().join(";"), count.parse().expect("a count"))
        })
        .collect();
    lines.sort();
    lines
}

impl Program {
    /// The stacks at `leaf` in a trace of `PROGRAM n`: `n` through `top` and `mid`, `2n`
    /// through `other`, and nothing else.
    pub fn assert_leaf_paths(&self, trace: &str, n: usize, what: &str) {
        let paths: Vec<Vec<String>> = events(trace, self.leaf).map(|e| path_to_main(&e, self.main)).collect();
        assert_eq!(paths.len(), 3 * n, "{what}");
        assert_eq!(paths.iter().filter(|s| **s == [self.leaf, self.mid, self.top, self.main]).count(), n, "{what}");
        assert_eq!(paths.iter().filter(|s| **s == [self.leaf, self.other, self.main]).count(), 2 * n, "{what}");
    }

    /// A trace of `PROGRAM n` probing `leaf`, `mid%return` and `top%return`: while the leaf
    /// runs, both callers' return addresses are the return probes' (each shown as the caller
    /// it stands for); at its return, each caller is gone from the stack.
    pub fn assert_pending_returns_kept(&self, trace: &str, n: usize, what: &str) {
        let paths = |function: &str| -> Vec<Vec<String>> {
            events(trace, function).map(|e| path_to_main(&e, self.main)).collect()
        };
        let via_top: Vec<Vec<String>> = paths(self.leaf).into_iter().filter(|s| s.len() == 4).collect();
        assert_eq!(via_top, vec![vec![self.leaf, self.mid, self.top, self.main]; n], "{what}");
        assert_eq!(paths(self.mid), vec![vec![self.top, self.main]; n], "{what}");
        assert_eq!(paths(self.top), vec![vec![self.main]; n], "{what}");
    }

    /// The folded stacks of `leaf` over `PROGRAM n`, from `main` on, sorted.
    pub fn folded_leaf(&self, n: u64) -> Vec<(String, u64)> {
        let mut lines = vec![
            (format!("{};{};{}", self.main, self.other, self.leaf), 2 * n),
            (format!("{};{};{};{}", self.main, self.top, self.mid, self.leaf), n),
        ];
        lines.sort();
        lines
    }
}
