//! The timeline in Chrome's trace-event format (`.json`), which older viewers
//! (`chrome://tracing`, Perfetto's legacy importer, speedscope) open: `{"traceEvents":[...]}`
//! with `ph` `B`/`E` for slices, `i` for instants, `C` for counters and `M` metadata naming
//! processes and threads. Times (`ts`) are microseconds of `CLOCK_MONOTONIC`, to the ns.

use std::io::{self, Write};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::timeline::{Arg, ArgValue, TimelineWriter};

/// A Chrome trace on `W`.
pub struct Chrome<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> Chrome<W> {
    /// A trace written to `out` (its opening written now).
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
        Ok(Chrome { out, first: true })
    }

    fn event(&mut self, e: &Event<'_>) -> io::Result<()> {
        let sep: &[u8] = if std::mem::take(&mut self.first) { b"\n" } else { b",\n" };
        self.out.write_all(sep)?;
        serde_json::to_writer(&mut self.out, e).map_err(io::Error::other)
    }
}

/// One trace event; fields that are `None` are left out.
#[derive(serde::Serialize, Default)]
struct Event<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'a str>,
    ph: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<f64>,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    args: Args<'a>,
}

/// `args`: the event's values, a metadata name, or a counter's value.
#[derive(Default)]
enum Args<'a> {
    #[default]
    None,
    Values(&'a [Arg]),
    Name(&'a str),
    Hits(u64),
}

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Args::None => {}
            Args::Values(args) => {
                for (name, value) in args.iter() {
                    match value {
                        ArgValue::Int(v) => map.serialize_entry(name, v)?,
                        ArgValue::Uint(v) => map.serialize_entry(name, v)?,
                        ArgValue::Str(v) => map.serialize_entry(name, v)?,
                    }
                }
            }
            Args::Name(name) => map.serialize_entry("name", name)?,
            Args::Hits(n) => map.serialize_entry("hits", n)?,
        }
        map.end()
    }
}

/// Nanoseconds as the format's microseconds.
fn micros(t: u64) -> Option<f64> {
    Some(t as f64 / 1000.0)
}

impl<W: Write> TimelineWriter for Chrome<W> {
    fn process(&mut self, pid: u32, name: &str) -> io::Result<()> {
        let args = Args::Name(name);
        self.event(&Event { name: Some("process_name"), ph: "M", pid, tid: Some(pid), args, ..Event::default() })
    }

    fn thread(&mut self, pid: u32, tid: u32, name: &str) -> io::Result<()> {
        let args = Args::Name(name);
        self.event(&Event { name: Some("thread_name"), ph: "M", pid, tid: Some(tid), args, ..Event::default() })
    }

    fn begin(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        let (name, cat, args) = (Some(name), Some("dprobe"), Args::Values(args));
        self.event(&Event { name, cat, ph: "B", ts: micros(t), pid, tid: Some(tid), args, ..Event::default() })
    }

    fn end(&mut self, t: u64, pid: u32, tid: u32, args: &[Arg]) -> io::Result<()> {
        let args = Args::Values(args);
        self.event(&Event { ph: "E", ts: micros(t), pid, tid: Some(tid), args, ..Event::default() })
    }

    fn instant(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        let (name, cat, args) = (Some(name), Some("dprobe"), Args::Values(args));
        let s = Some("t");
        self.event(&Event { name, cat, ph: "i", s, ts: micros(t), pid, tid: Some(tid), args })
    }

    fn counter(&mut self, t: u64, pid: u32, _index: usize, name: &str, value: u64) -> io::Result<()> {
        let args = Args::Hits(value);
        self.event(&Event { name: Some(name), ph: "C", ts: micros(t), pid, args, ..Event::default() })
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}
