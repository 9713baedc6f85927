//! `--filter` for the BPF program: the filter turned into tests in postfix order, which the
//! program runs on each hit before counting it. It compares numbers the program can read
//! (see [`super::value_source`]) and the thread's name; what it cannot do (a pattern, a
//! string read from memory, a filter too long) is refused with the reason, and the probe
//! goes the perf way, where dprobe tests each event.

use dprobe_spec::{CmpOp, Filter, Literal};

use super::ValueSource;

/// Tests the program runs at most (comparisons and the `&&`, `||` and `!` joining them).
pub const MAX_TESTS: usize = 32;

/// A filter's field, as the program reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A number read as the source says.
    Number(ValueSource),
    /// The thread's name.
    Comm,
}

/// One step of the program's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// The value, compared with a number (signed, as dprobe compares them).
    Compare {
        /// `==`, `!=`, `<`, `<=`, `>` or `>=`.
        op: CmpOp,
        /// Read as it says.
        value: ValueSource,
        /// Compared with.
        literal: i64,
    },
    /// The thread's name is `name` (`equal`) or is not.
    Comm {
        /// Whether the name must be it.
        equal: bool,
        /// At most 15 bytes, zero-padded.
        name: [u8; 16],
    },
    /// Always this.
    Constant(bool),
    /// The last two, both.
    And,
    /// The last two, either.
    Or,
    /// The last one, negated.
    Not,
}

/// `filter` as the program's tests, each field read as `operand` says (`None`: the probe
/// does not fetch it, and comparisons with it are false, as in dprobe).
pub fn compile(
    filter: &Filter,
    operand: &mut dyn FnMut(&str) -> Result<Option<Operand>, String>,
) -> Result<Vec<Test>, String> {
    let mut tests = Vec::new();
    push(filter, operand, &mut tests)?;
    if tests.len() > MAX_TESTS {
        return Err(format!("the filter makes {} tests (the BPF program runs at most {MAX_TESTS})", tests.len()));
    }
    Ok(tests)
}

fn push(
    filter: &Filter,
    operand: &mut dyn FnMut(&str) -> Result<Option<Operand>, String>,
    tests: &mut Vec<Test>,
) -> Result<(), String> {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            push(a, operand, tests)?;
            push(b, operand, tests)?;
            tests.push(if matches!(filter, Filter::And(..)) { Test::And } else { Test::Or });
        }
        Filter::Not(a) => {
            push(a, operand, tests)?;
            tests.push(Test::Not);
        }
        Filter::Cmp { field, op, value } => {
            let test = match (operand(field).map_err(|e| format!("`{field}`: {e}"))?, value) {
                (None, _) => Test::Constant(false),
                (Some(Operand::Number(_)), Literal::Str(_)) | (Some(Operand::Comm), Literal::Int(_)) => {
                    Test::Constant(false)
                }
                (Some(Operand::Number(v)), Literal::Int(n)) => Test::Compare { op: *op, value: v, literal: *n },
                (Some(Operand::Comm), Literal::Str(s)) => comm_test(*op, s)?,
            };
            tests.push(test);
        }
    }
    Ok(())
}

/// The thread's name compared with `s`: equal or not. A pattern without `*` or `?` is the
/// name itself; a name longer than the kernel keeps (15 bytes) is never a thread's.
fn comm_test(op: CmpOp, s: &str) -> Result<Test, String> {
    let equal = match op {
        CmpOp::Eq => true,
        CmpOp::Ne => false,
        CmpOp::Glob if !s.contains(['*', '?']) => true,
        CmpOp::Glob => return Err(format!("the pattern \"{s}\" is matched in dprobe")),
        _ => return Ok(Test::Constant(false)),
    };
    if s.len() > 15 || s.contains('\0') {
        return Ok(Test::Constant(!equal));
    }
    let mut name = [0u8; 16];
    name[..s.len()].copy_from_slice(s.as_bytes());
    Ok(Test::Comm { equal, name })
}

/// The names a filter's text may use: `fields`, and every other word in it (a name the probe
/// does not fetch is another probe's, and false here).
pub fn names<'a>(text: &'a str, fields: &[&'a str]) -> Vec<&'a str> {
    let mut names = fields.to_vec();
    let mut quoted = false;
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        let word = c.is_ascii_alphanumeric() || c == '_';
        match start {
            Some(s) if !word => {
                let w = &text[s..i];
                if w.starts_with(|c: char| !c.is_ascii_digit()) {
                    names.push(w);
                }
                start = None;
            }
            None if word && !quoted => start = Some(i),
            _ => {}
        }
        if c == '"' {
            quoted = !quoted;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{Origin, ValueSource};
    use dprobe_spec::parse_filter;

    fn number(offset: u32) -> Operand {
        Operand::Number(ValueSource {
            origin: Origin::Regs(offset),
            derefs: Vec::new(),
            user_memory: true,
            bits: 64,
            signed: true,
        })
    }

    fn compiled(text: &str) -> Result<Vec<Test>, String> {
        let filter = parse_filter(text, &names(text, &[])).unwrap();
        compile(&filter, &mut |name| match name {
            "size" => Ok(Some(number(112))),
            "c" => Ok(Some(Operand::Comm)),
            "path" => Err("a string read from memory".into()),
            _ => Ok(None),
        })
    }

    fn code(tests: &[Test]) -> String {
        let one = |t: &Test| match t {
            Test::Compare { op, literal, .. } => format!("{op:?}{literal}"),
            Test::Comm { equal, name } => {
                format!("{}{}", if *equal { "=" } else { "!" }, String::from_utf8_lossy(name).trim_end_matches('\0'))
            }
            Test::Constant(b) => b.to_string(),
            other => format!("{other:?}"),
        };
        tests.iter().map(one).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn postfix_order_of_the_tree() {
        let t = compiled("size > 10 && (c == \"alpha\" || !(size < 3))").unwrap();
        assert_eq!(code(&t), "Gt10 =alpha Lt3 Not Or And");
        assert_eq!(code(&compiled("c ~ \"bravo\" || c != \"x\"").unwrap()), "=bravo !x Or");
    }

    #[test]
    fn what_is_never_true_is_a_constant() {
        assert_eq!(code(&compiled("other == 1").unwrap()), "false", "another probe's field");
        assert_eq!(code(&compiled("size == \"x\"").unwrap()), "false");
        assert_eq!(code(&compiled("c == 3").unwrap()), "false");
        assert_eq!(code(&compiled("c < \"b\"").unwrap()), "false");
        assert_eq!(code(&compiled("c == \"a-name-of-16-bytes\"").unwrap()), "false", "longer than a comm");
        assert_eq!(code(&compiled("c != \"a-name-of-16-bytes\"").unwrap()), "true");
    }

    #[test]
    fn what_the_program_cannot_test_is_refused() {
        assert!(compiled("c ~ \"al*\"").unwrap_err().contains("matched in dprobe"));
        assert!(compiled("path == \"/etc\"").unwrap_err().contains("`path`: a string read from memory"));
        let long = vec!["size == 1"; 17].join(" || ");
        assert!(compiled(&long).unwrap_err().contains("33 tests"));
        assert_eq!(compiled(&vec!["size == 1"; 16].join(" || ")).unwrap().len(), 31);
    }

    #[test]
    fn names_are_the_words_outside_quotes() {
        assert_eq!(names("a_1 > 0x10 && b ~ \"c d\" || !(e<-2)", &["z"]), ["z", "a_1", "b", "e"]);
    }
}
