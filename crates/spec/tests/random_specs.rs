//! The parsers never panic, and every error span lies on character boundaries inside the
//! text (so the message can always be rendered), whatever the input.
use dprobe_spec::*;

#[test]
fn random_specs_and_filters_never_panic() {
    const PIECES: &[&str] = &[
        "libc",
        ":",
        "::",
        "openat",
        "+",
        "-",
        "0x",
        "1f",
        "4",
        "%",
        "return",
        "%rdi",
        "$arg",
        "$retval",
        "$comm",
        "$stack",
        "(",
        ")",
        "=",
        "x",
        " ",
        "string",
        "s32",
        "u8",
        "@",
        "\\",
        "kernel:",
        "tracepoint:",
        "é",
        "λ",
        "\"",
        "~",
        "&&",
        "||",
        "!",
        "<",
        ">=",
        "==",
        "ret",
        "path",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..50_000 {
        let n = (next() % 10) as usize;
        let text: String = (0..n).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
        for result in [parse_probe(&text).err(), parse_filter(&text, &["ret", "path"]).err()].into_iter().flatten() {
            assert!(text.is_char_boundary(result.span.start) && text.is_char_boundary(result.span.end), "{text:?}");
            let _ = result.to_string();
        }
    }
}
