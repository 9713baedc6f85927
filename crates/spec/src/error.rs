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
    /// More dereferences inside one another than an engine evaluates.
    DereferenceTooDeep,
    /// An address after `@` that is not a number.
    BadAddress,
    /// An immediate after `\` that is not a number.
    BadImmediate,
    /// An unknown type after `:`.
    UnknownType,
    /// More than one `:TYPE` after a fetch argument.
    TwoTypes,
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

impl SpecErrorKind {
    /// What is wrong, said to the user: `{}` stands for the offending part.
    fn message(&self) -> &'static str {
        use SpecErrorKind::*;
        match self {
            Empty => "empty probe spec",
            MissingTarget => "no function, address or tracepoint to probe",
            MissingFunction => "nothing after `{}`",
            BadOffset => "`{}` is not an offset",
            OffsetOnReturn => "a return probe cannot have an offset",
            ReturnOnLine => "a source line has no return",
            BadLine => "`{}` is not a line number",
            UnknownSuffix => "unknown suffix `{}`",
            BadTracepoint => "`{}` is not a tracepoint",
            TracepointModifier => "a tracepoint takes no offset or %return",
            BadUsdt => "`{}` is not a static probe",
            UsdtModifier => "a static probe (usdt:) takes no offset or %return",
            UnknownRegister => "unknown register `{}`",
            UnknownVariable => "unknown variable `{}`",
            BadArgIndex => "`{}` is out of range",
            RetvalOnEntry => "$retval is only known at a function's return",
            BadDereference => "bad dereference `{}`",
            DereferenceTooDeep => "the dereference `{}` is nested too deeply",
            BadAddress => "`{}` is not an address",
            BadImmediate => "`{}` is not a number",
            UnknownType => "unknown type `{}`",
            TwoTypes => "`{}` has more than one type",
            BadFetchArg => "`{}` is not a fetch argument",
            BadName => "`{}` is not a valid argument name",
            DuplicateName => "argument name `{}` is used twice",
            ArgsOnTracepoint => "tracepoints take no fetch arguments",
            BadFilter => "bad filter at `{}`",
            UnknownField => "the filter names `{}`, which the probe does not fetch",
            FilterTooDeep => "the filter is nested too deeply",
            FilterTooLong => "the filter has too many comparisons",
        }
    }
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
        let what = self.kind.message().replace("{}", self.fragment());
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
