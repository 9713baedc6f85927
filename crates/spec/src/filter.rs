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
            Filter::Cmp { field: name, op, value } => compare(field(name), *op, value),
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

/// One comparison of a filter: `got OP literal`. A missing value (an unknown field, a fault)
/// or a string compared with a number is false.
pub fn compare(got: Option<Value<'_>>, op: CmpOp, literal: &Literal) -> bool {
    match (got, literal) {
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
    }
}

/// Whether `s` matches the glob `pattern` (`*` any run of bytes, `?` one byte).
///
/// The pieces between stars are matched left to right, each at its leftmost place: with only
/// `*` and `?` that is always the best choice, so nothing is ever retried and the cost is at
/// most `pattern.len() * s.len()` byte comparisons, whatever the pattern (`"*a*a*a*a*b"` on a
/// long run of `a` included).
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    glob_with(pattern, s, &mut |p, c| p == c)
}

/// [`glob`], comparing bytes with `same` (which tests count).
fn glob_with(pattern: &[u8], s: &[u8], same: &mut dyn FnMut(u8, u8) -> bool) -> bool {
    let mut fits = |piece: &[u8], window: &[u8]| piece.iter().zip(window).all(|(&p, &c)| p == b'?' || same(p, c));
    let Some(first_star) = pattern.iter().position(|&c| c == b'*') else {
        return pattern.len() == s.len() && fits(pattern, s);
    };
    let last_star = pattern.iter().rposition(|&c| c == b'*').expect("there is a star");
    let (head, tail) = (&pattern[..first_star], &pattern[last_star + 1..]);
    if s.len() < head.len() + tail.len() || !fits(head, &s[..head.len()]) || !fits(tail, &s[s.len() - tail.len()..]) {
        return false;
    }
    let mut rest = &s[head.len()..s.len() - tail.len()];
    let middle = if first_star < last_star { &pattern[first_star + 1..last_star] } else { &[][..] };
    for piece in middle.split(|&c| c == b'*').filter(|p| !p.is_empty()) {
        if rest.len() < piece.len() {
            return false;
        }
        match (0..=rest.len() - piece.len()).find(|&i| fits(piece, &rest[i..i + piece.len()])) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
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

/// How deep parentheses and `!` may nest. Parsing, evaluating and dropping a filter recurse
/// once per level; a bound keeps any input from overflowing the stack.
pub const MAX_FILTER_DEPTH: usize = 100;
/// How many comparisons a filter may have (each `&&` or `||` adds a level to the tree).
pub const MAX_FILTER_COMPARISONS: usize = 256;

struct P<'a> {
    text: &'a str,
    toks: Vec<(usize, usize, Tok)>,
    pos: usize,
    fields: &'a [&'a str],
    /// Parentheses and `!` open around the current token.
    depth: usize,
    comparisons: usize,
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

    /// A limit reached at the current token: `at most LIMIT`.
    fn too_much(&self, kind: K, limit: String) -> SpecError {
        SpecError::new(kind, self.text, self.span(), format!("at most {limit}"))
    }

    fn or(&mut self) -> Result<Filter, SpecError> {
        self.chain(&Tok::Or, Self::and, Filter::Or)
    }

    fn and(&mut self) -> Result<Filter, SpecError> {
        self.chain(&Tok::And, Self::unary, Filter::And)
    }

    /// `next (op next)*`, joined from the left.
    fn chain(
        &mut self,
        op: &Tok,
        next: fn(&mut Self) -> Result<Filter, SpecError>,
        join: fn(Box<Filter>, Box<Filter>) -> Filter,
    ) -> Result<Filter, SpecError> {
        let mut left = next(self)?;
        while self.peek() == Some(op) {
            self.pos += 1;
            left = join(Box::new(left), Box::new(next(self)?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, SpecError> {
        if matches!(self.peek(), Some(Tok::Not | Tok::Open)) {
            if self.depth == MAX_FILTER_DEPTH {
                return Err(
                    self.too_much(K::FilterTooDeep, format!("{MAX_FILTER_DEPTH} levels of parentheses and `!`"))
                );
            }
            self.depth += 1;
            let inner = self.nested();
            self.depth -= 1;
            return inner;
        }
        self.cmp()
    }

    /// `!UNARY` or `(OR)`.
    fn nested(&mut self) -> Result<Filter, SpecError> {
        let open = self.peek() == Some(&Tok::Open);
        self.pos += 1;
        if !open {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        let inner = self.or()?;
        if self.peek() != Some(&Tok::Close) {
            return Err(self.bad("a closing parenthesis"));
        }
        self.pos += 1;
        Ok(inner)
    }

    fn cmp(&mut self) -> Result<Filter, SpecError> {
        let Some(Tok::Ident(field)) = self.peek().cloned() else {
            return Err(self.bad("a field name (one of the probe's fetched arguments)"));
        };
        if self.comparisons == MAX_FILTER_COMPARISONS {
            return Err(self.too_much(K::FilterTooLong, format!("{MAX_FILTER_COMPARISONS} comparisons")));
        }
        self.comparisons += 1;
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
    let mut p = P { text, toks, pos: 0, fields, depth: 0, comparisons: 0 };
    if p.toks.is_empty() {
        return Err(SpecError::new(K::BadFilter, text, 0..text.len(), "a comparison such as `ret < 0`"));
    }
    let f = p.or()?;
    if p.pos != p.toks.len() {
        return Err(p.bad("&&, || or the end of the filter"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious recursive matcher, exponential on some patterns: the reference on small inputs.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some(b'?'), Some(_)) => reference(&p[1..], &s[1..]),
            (Some(p0), Some(c)) if p0 == c => reference(&p[1..], &s[1..]),
            _ => false,
        }
    }

    /// Every word of up to `n` letters of `alphabet`.
    fn words(alphabet: &[u8], n: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..n {
            last = last
                .iter()
                .flat_map(|w: &Vec<u8>| alphabet.iter().map(move |&c| [w.as_slice(), &[c]].concat()))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn glob_agrees_with_the_recursive_definition() {
        let patterns = words(b"ab*?", 5);
        let strings = words(b"ab", 6);
        let mut checked = 0;
        for p in &patterns {
            for s in &strings {
                assert_eq!(
                    glob(p, s),
                    reference(p, s),
                    "{:?} on {:?}",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(s)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 1365 * 127);
    }

    #[test]
    fn glob_costs_at_most_pattern_times_text_comparisons() {
        let cases: &[(&str, usize, bool)] = &[
            ("*a*a*a*a*a*a*a*a*b", 40, false),
            ("*a*a*a*a*a*a*a*a*a", 40, true),
            ("a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", 4096, false),
            ("*aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab*", 4096, false),
        ];
        for &(pattern, n, expected) in cases {
            let text = vec![b'a'; n];
            let mut comparisons = 0usize;
            let matched = glob_with(pattern.as_bytes(), &text, &mut |p, c| {
                comparisons += 1;
                p == c
            });
            assert_eq!(matched, expected, "{pattern}");
            assert!(comparisons <= pattern.len() * n, "{pattern}: {comparisons} comparisons on {n} bytes");
        }
    }
}
