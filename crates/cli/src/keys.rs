//! `--by comm|pid|tid|stack|NAME[,…]`: what splits a count or a histogram, and each event's key.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use dprobe_core::fetch::Fetched;
use dprobe_core::KeyedTally;
use dprobe_spec::ArgType;

use crate::output::{self, ProbeInfo};
use crate::sinks::Passed;

/// One part of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// The thread's name.
    Comm,
    /// The process.
    Pid,
    /// The thread.
    Tid,
    /// The stack (`--stack`), folded: `main;run;leaf`.
    Stack,
    /// A fetched value, by its name.
    Value(String),
}

impl KeyPart {
    /// Its column's title.
    pub fn title(&self) -> String {
        match self {
            KeyPart::Comm => "COMM".into(),
            KeyPart::Pid => "PID".into(),
            KeyPart::Tid => "TID".into(),
            KeyPart::Stack => "STACK".into(),
            KeyPart::Value(name) => name.to_uppercase(),
        }
    }
}

/// The parts of `--by`, checked against the names the probes fetch.
pub fn parse_by(words: &[String], fetched: &[&str]) -> Result<Vec<KeyPart>> {
    let mut parts = Vec::new();
    for w in words.iter().map(|w| w.trim()) {
        let part = match w {
            "comm" => KeyPart::Comm,
            "pid" => KeyPart::Pid,
            "tid" => KeyPart::Tid,
            "stack" => KeyPart::Stack,
            "" => bail!("--by: an empty key (keys: comm, pid, tid, stack or a fetched value's name)"),
            name if fetched.contains(&name) => KeyPart::Value(name.to_owned()),
            name => bail!(
                "--by {name}: not comm, pid, tid, stack nor a fetched value's name (fetched: {})",
                if fetched.is_empty() { "none".to_owned() } else { fetched.join(", ") }
            ),
        };
        if parts.contains(&part) {
            bail!("--by: `{w}` is given twice");
        }
        parts.push(part);
    }
    Ok(parts)
}

/// The key of `e`: one text per part, joined by tabs (which no part holds: strings are
/// written escaped).
pub fn key_of(by: &[KeyPart], e: &Passed<'_>, out: &mut String) {
    out.clear();
    for (n, part) in by.iter().enumerate() {
        if n > 0 {
            out.push('\t');
        }
        match part {
            KeyPart::Comm => push_comm(e.event.comm, out),
            KeyPart::Pid => {
                let _ = write!(out, "{}", e.event.pid);
            }
            KeyPart::Tid => {
                let _ = write!(out, "{}", e.event.tid);
            }
            KeyPart::Stack => {
                let mut stack = String::new();
                crate::stacks::folded(e.stack, &mut stack);
                out.push_str(&stack);
            }
            KeyPart::Value(name) => match e.probe.args.iter().position(|a| &a.name == name) {
                Some(i) => output::human_value(e.event.values.get(i).unwrap_or(Fetched::Fault(0)), out),
                // This probe does not fetch it.
                None => out.push('-'),
            },
        }
    }
}

/// The key of figures an engine aggregated itself for `probe`: their comm, pid, tid and
/// fetched value, shown as [`key_of`] shows them (a stack, which it does not key by: `-`).
pub fn tally_key(by: &[KeyPart], t: &KeyedTally, probe: &ProbeInfo, out: &mut String) {
    out.clear();
    for (n, part) in by.iter().enumerate() {
        if n > 0 {
            out.push('\t');
        }
        match part {
            KeyPart::Comm => push_comm(&t.comm, out),
            KeyPart::Pid => {
                let _ = write!(out, "{}", t.pid);
            }
            KeyPart::Tid => {
                let _ = write!(out, "{}", t.tid);
            }
            KeyPart::Value(name) => match (probe.args.iter().find(|a| &a.name == name), t.by) {
                (Some(arg), Some(v)) => output::human_value(Fetched::Int(truncated(v, arg.ty), arg.ty), out),
                (Some(_), None) => output::human_value(Fetched::Fault(0), out),
                (None, _) => out.push('-'),
            },
            KeyPart::Stack => out.push('-'),
        }
    }
}

/// `v` (sign-extended or not) cut to `ty`'s width, as events carry their integers.
fn truncated(v: i64, ty: ArgType) -> u64 {
    match ty {
        ArgType::S(b) | ArgType::U(b) | ArgType::X(b) if b < 64 => v as u64 & ((1u64 << b) - 1),
        _ => v as u64,
    }
}

/// A thread's name, its control characters shown as `?`.
fn push_comm(comm: &[u8], out: &mut String) {
    for c in String::from_utf8_lossy(comm).chars() {
        out.push(if c.is_control() { '?' } else { c });
    }
}

/// A key as printed in a histogram's title: `[worker-1, 1234]`.
pub fn bracketed(key: &str) -> String {
    format!("[{}]", key.replace('\t', ", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_known_words_or_fetched_names() {
        let words = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            parse_by(&words("comm,tid,size"), &["size"]).unwrap(),
            vec![KeyPart::Comm, KeyPart::Tid, KeyPart::Value("size".into())]
        );
        let err = |s: &str| parse_by(&words(s), &["size"]).unwrap_err().to_string();
        assert!(err("cpu").contains("--by cpu: not comm, pid, tid, stack nor a fetched value's name (fetched: size)"));
        assert!(err("comm,comm").contains("given twice"));
        assert!(err("comm,").contains("empty key"));
    }
}
