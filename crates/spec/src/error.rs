//! Errors that say what was wrong, where, and what was expected.

use std::fmt;
use std::ops::Range;

/// What is wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// The spec is empty.
    Empty,
    /// No function, address or tracepoint where one was expected.
    MissingTarget,
    /// A `BINARY:` prefix with nothing after it, or `kernel:`/`tracepoint:` without a name.
    MissingFunction,
    /// An offset that is not a number.
    BadOffset,
    /// An offset with `%return`: return probes sit on a function's entry.
    OffsetOnReturn,
    /// `%return` on a source line: return probes sit on functions.
    ReturnOnLine,
    /// A line number that is not one (`file.c:0`).
    BadLine,
    /// A `%` suffix other than `%return`.
    UnknownSuffix,
    /// `tracepoint:` without `SUBSYSTEM:EVENT`.
    BadTracepoint,
    /// Tracepoints take no `%return` or offset.
    TracepointModifier,
    /// `usdt:` without `BINARY:[PROVIDER:]NAME`.
    BadUsdt,
    /// Static probes take no `%return` or offset.
    UsdtModifier,
    /// An unknown register.
    UnknownRegister,
    /// An unknown `$variable`.
    UnknownVariable,
    /// `$argN` out of range.
    BadArgIndex,
    /// `$retval` on an entry probe.
    RetvalOnEntry,
    /// A dereference `+OFF(...)` that is not closed or not a number.
    BadDereference,
    /// An address after `@` that is not a number.
    BadAddress,
    /// An immediate after `\` that is not a number.
    BadImmediate,
    /// An unknown type after `:`.
    UnknownType,
    /// A fetch argument that is empty or starts with an unexpected character.
    BadFetchArg,
    /// An argument name that is not an identifier.
    BadName,
    /// Two arguments with the same name.
    DuplicateName,
    /// Arguments on a tracepoint (its fields come from the kernel).
    ArgsOnTracepoint,
    /// A filter that does not parse.
    BadFilter,
    /// A filter naming a field that the probe does not fetch.
    UnknownField,
    /// A filter nested deeper than [`crate::MAX_FILTER_DEPTH`].
    FilterTooDeep,
    /// A filter with more than [`crate::MAX_FILTER_COMPARISONS`] comparisons.
    FilterTooLong,
}

/// A spec error: the kind, the text and the span of the offending part, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// What is wrong.
    pub kind: SpecErrorKind,
    /// The whole text that was parsed.
    pub text: String,
    /// Byte range of the offending part in `text`.
    pub span: Range<usize>,
    /// What would have been valid there.
    pub expected: String,
}

impl SpecError {
    pub(crate) fn new(kind: SpecErrorKind, text: &str, span: Range<usize>, expected: impl Into<String>) -> Self {
        let end = span.end.min(text.len());
        let start = span.start.min(end);
        SpecError { kind, text: text.to_owned(), span: start..end, expected: expected.into() }
    }

    /// The offending part.
    pub fn fragment(&self) -> &str {
        &self.text[self.span.clone()]
    }
}

impl fmt::Display for SpecError {
    /// ```text
    /// bad probe spec: unknown register `%foo`
    ///   libc:openat path=+0(%foo):string
    ///                       ^^^^ expected a register such as %di, %si, %dx, %ax, %ip, %sp
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            SpecErrorKind::Empty => "empty probe spec".to_owned(),
            SpecErrorKind::MissingTarget => "no function, address or tracepoint to probe".to_owned(),
            SpecErrorKind::MissingFunction => format!("nothing after `{}`", self.fragment()),
            SpecErrorKind::BadOffset => format!("`{}` is not an offset", self.fragment()),
            SpecErrorKind::OffsetOnReturn => "a return probe cannot have an offset".to_owned(),
            SpecErrorKind::ReturnOnLine => "a source line has no return".to_owned(),
            SpecErrorKind::BadLine => format!("`{}` is not a line number", self.fragment()),
            SpecErrorKind::UnknownSuffix => format!("unknown suffix `{}`", self.fragment()),
            SpecErrorKind::BadTracepoint => format!("`{}` is not a tracepoint", self.fragment()),
            SpecErrorKind::TracepointModifier => "a tracepoint takes no offset or %return".to_owned(),
            SpecErrorKind::BadUsdt => format!("`{}` is not a static probe", self.fragment()),
            SpecErrorKind::UsdtModifier => "a static probe (usdt:) takes no offset or %return".to_owned(),
            SpecErrorKind::UnknownRegister => format!("unknown register `{}`", self.fragment()),
            SpecErrorKind::UnknownVariable => format!("unknown variable `{}`", self.fragment()),
            SpecErrorKind::BadArgIndex => format!("`{}` is out of range", self.fragment()),
            SpecErrorKind::RetvalOnEntry => "$retval is only known at a function's return".to_owned(),
            SpecErrorKind::BadDereference => format!("bad dereference `{}`", self.fragment()),
            SpecErrorKind::BadAddress => format!("`{}` is not an address", self.fragment()),
            SpecErrorKind::BadImmediate => format!("`{}` is not a number", self.fragment()),
            SpecErrorKind::UnknownType => format!("unknown type `{}`", self.fragment()),
            SpecErrorKind::BadFetchArg => format!("`{}` is not a fetch argument", self.fragment()),
            SpecErrorKind::BadName => format!("`{}` is not a valid argument name", self.fragment()),
            SpecErrorKind::DuplicateName => format!("argument name `{}` is used twice", self.fragment()),
            SpecErrorKind::ArgsOnTracepoint => "tracepoints take no fetch arguments".to_owned(),
            SpecErrorKind::BadFilter => format!("bad filter at `{}`", self.fragment()),
            SpecErrorKind::UnknownField => {
                format!("the filter names `{}`, which the probe does not fetch", self.fragment())
            }
            SpecErrorKind::FilterTooDeep => "the filter is nested too deeply".to_owned(),
            SpecErrorKind::FilterTooLong => "the filter has too many comparisons".to_owned(),
        };
        let subject = match self.kind {
            SpecErrorKind::BadFilter
            | SpecErrorKind::UnknownField
            | SpecErrorKind::FilterTooDeep
            | SpecErrorKind::FilterTooLong => "bad filter",
            _ => "bad probe spec",
        };
        writeln!(f, "{subject}: {what}")?;
        writeln!(f, "  {}", self.text)?;
        let pad = self.text[..self.span.start].chars().count();
        let width = self.fragment().chars().count().max(1);
        write!(f, "  {}{} expected {}", " ".repeat(pad), "^".repeat(width), self.expected)
    }
}
