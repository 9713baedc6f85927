//! Filters on fetched values: `ret < 0`, `path ~ "/etc/*" && flags != 0`, the kernel's
//! event filter syntax (which the kernel engine installs as is).

use crate::error::{SpecError, SpecErrorKind as K};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `~`: glob match of a string (`*`, `?`).
    Glob,
}

/// A value in a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A number.
    Int(i64),
    /// A quoted string.
    Str(String),
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `FIELD OP VALUE`.
    Cmp {
        /// A fetched argument's name.
        field: String,
        /// The operator.
        op: CmpOp,
        /// The value.
        value: Literal,
    },
    /// Both.
    And(Box<Filter>, Box<Filter>),
    /// Either.
    Or(Box<Filter>, Box<Filter>),
    /// Not.
    Not(Box<Filter>),
}

/// A fetched value, as a filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A number.
    Int(i64),
    /// A string.
    Str(&'a [u8]),
}

impl Filter {
    /// Evaluate with the fetched values `field` returns; a field it does not know, or a
    /// comparison of a string with a number, is false.
    pub fn matches<'a>(&self, field: &dyn Fn(&str) -> Option<Value<'a>>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(field) && b.matches(field),
            Filter::Or(a, b) => a.matches(field) || b.matches(field),
            Filter::Not(a) => !a.matches(field),
            Filter::Cmp { field: name, op, value } => match (field(name), value) {
                (Some(Value::Int(v)), Literal::Int(w)) => match op {
                    CmpOp::Eq => v == *w,
                    CmpOp::Ne => v != *w,
                    CmpOp::Lt => v < *w,
                    CmpOp::Le => v <= *w,
                    CmpOp::Gt => v > *w,
                    CmpOp::Ge => v >= *w,
                    CmpOp::Glob => false,
                },
                (Some(Value::Str(s)), Literal::Str(w)) => match op {
                    CmpOp::Eq => s == w.as_bytes(),
                    CmpOp::Ne => s != w.as_bytes(),
                    CmpOp::Glob => glob(w.as_bytes(), s),
                    _ => false,
                },
                _ => false,
            },
        }
    }

    /// Names of the fields it uses.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Filter::Cmp { field, .. } => vec![field],
            Filter::And(a, b) | Filter::Or(a, b) => [a.fields(), b.fields()].concat(),
            Filter::Not(a) => a.fields(),
        }
    }
}

/// Whether `s` matches the glob `pattern` (`*` any run of bytes, `?` one byte).
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], s) || (!s.is_empty() && glob(pattern, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    Op(CmpOp),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<(usize, usize, Tok)>, SpecError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let bad = |s: usize, e: usize, what: &str| SpecError::new(K::BadFilter, text, s..e, what);
    while i < b.len() {
        let c = b[i];
        let start = i;
        let two = text.get(i..i + 2).unwrap_or("");
        let (tok, len) = match c {
            b' ' | b'\t' => {
                i += 1;
                continue;
            }
            b'(' => (Tok::Open, 1),
            b')' => (Tok::Close, 1),
            b'~' => (Tok::Op(CmpOp::Glob), 1),
            _ if two == "&&" => (Tok::And, 2),
            _ if two == "||" => (Tok::Or, 2),
            _ if two == "==" => (Tok::Op(CmpOp::Eq), 2),
            _ if two == "!=" => (Tok::Op(CmpOp::Ne), 2),
            _ if two == "<=" => (Tok::Op(CmpOp::Le), 2),
            _ if two == ">=" => (Tok::Op(CmpOp::Ge), 2),
            b'<' => (Tok::Op(CmpOp::Lt), 1),
            b'>' => (Tok::Op(CmpOp::Gt), 1),
            b'!' => (Tok::Not, 1),
            b'"' => {
                let end = text[i + 1..].find('"').ok_or_else(|| bad(i, b.len(), "a closing quote"))?;
                (Tok::Str(text[i + 1..i + 1 + end].to_owned()), end + 2)
            }
            b'-' | b'0'..=b'9' => {
                let end = text[i + 1..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(b.len(), |e| i + 1 + e);
                let lit = &text[i..end];
                let n = parse_int(lit).ok_or_else(|| bad(i, end, "a number such as 0, -2 or 0x10"))?;
                (Tok::Int(n), end - i)
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(b.len(), |e| i + e);
                (Tok::Ident(text[i..end].to_owned()), end - i)
            }
            _ => {
                let end = i + text[i..].chars().next().map_or(1, char::len_utf8);
                return Err(bad(i, end, "a field name, a comparison (== != < <= > >= ~), && || ! or parentheses"));
            }
        };
        i += len;
        out.push((start, i, tok));
    }
    Ok(out)
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let v = match body.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => body.parse().ok()?,
    };
    Some(if neg { -v } else { v })
}

struct P<'a> {
    text: &'a str,
    toks: Vec<(usize, usize, Tok)>,
    pos: usize,
    fields: &'a [&'a str],
}

impl P<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.2)
    }

    fn span(&self) -> std::ops::Range<usize> {
        self.toks.get(self.pos).map_or(self.text.len()..self.text.len(), |t| t.0..t.1)
    }

    fn bad(&self, expected: &str) -> SpecError {
        let span = self.span();
        // At the end of the text, point at its last character.
        let last = self.text.char_indices().last().map_or(0, |(i, _)| i);
        let span = if span.is_empty() { last..self.text.len() } else { span };
        SpecError::new(K::BadFilter, self.text, span, expected)
    }

    fn or(&mut self) -> Result<Filter, SpecError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, SpecError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, SpecError> {
        match self.peek() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Filter::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(self.bad("a closing parenthesis"));
                }
                self.pos += 1;
                Ok(inner)
            }
            _ => self.cmp(),
        }
    }

    fn cmp(&mut self) -> Result<Filter, SpecError> {
        let Some(Tok::Ident(field)) = self.peek().cloned() else {
            return Err(self.bad("a field name (one of the probe's fetched arguments)"));
        };
        if !self.fields.contains(&field.as_str()) {
            let span = self.span();
            let known =
                if self.fields.is_empty() { "none: fetch arguments first".to_owned() } else { self.fields.join(", ") };
            return Err(SpecError::new(
                K::UnknownField,
                self.text,
                span,
                format!("one of the fetched arguments: {known}"),
            ));
        }
        self.pos += 1;
        let Some(Tok::Op(op)) = self.peek().cloned() else { return Err(self.bad("a comparison: == != < <= > >= ~")) };
        self.pos += 1;
        let value = match self.peek().cloned() {
            Some(Tok::Int(n)) => Literal::Int(n),
            Some(Tok::Str(s)) => Literal::Str(s),
            _ => return Err(self.bad("a number or a \"quoted string\"")),
        };
        if op == CmpOp::Glob && !matches!(value, Literal::Str(_)) {
            return Err(self.bad("a \"quoted pattern\" after ~"));
        }
        self.pos += 1;
        Ok(Filter::Cmp { field, op, value })
    }
}

/// Parse a filter over the probe's fetched argument names `fields`.
pub fn parse_filter(text: &str, fields: &[&str]) -> Result<Filter, SpecError> {
    let toks = tokenize(text)?;
    let mut p = P { text, toks, pos: 0, fields };
    if p.toks.is_empty() {
        return Err(SpecError::new(K::BadFilter, text, 0..text.len(), "a comparison such as `ret < 0`"));
    }
    let f = p.or()?;
    if p.pos != p.toks.len() {
        return Err(p.bad("&&, || or the end of the filter"));
    }
    Ok(f)
}
