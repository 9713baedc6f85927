//! The timeline in Chrome's trace-event format (`.json`), which older viewers
//! (`chrome://tracing`, Perfetto's legacy importer, speedscope) open: `{"traceEvents":[...]}`
//! with `ph` `B`/`E` for slices, `i` for instants, `C` for counters and `M` metadata naming
//! processes and threads. Times (`ts`) are microseconds of `CLOCK_MONOTONIC`, to the ns.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

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

    fn event(&mut self, e: Value) -> io::Result<()> {
        let sep: &[u8] = if std::mem::take(&mut self.first) { b"\n" } else { b",\n" };
        self.out.write_all(sep)?;
        serde_json::to_writer(&mut self.out, &e).map_err(io::Error::other)
    }
}

/// Nanoseconds as the format's microseconds.
fn micros(t: u64) -> f64 {
    t as f64 / 1000.0
}

fn arguments(args: &[Arg]) -> Value {
    let mut map = Map::new();
    for (name, value) in args {
        let v = match value {
            ArgValue::Int(v) => json!(v),
            ArgValue::Uint(v) => json!(v),
            ArgValue::Str(s) => json!(s),
        };
        map.insert(name.clone(), v);
    }
    Value::Object(map)
}

impl<W: Write> TimelineWriter for Chrome<W> {
    fn process(&mut self, pid: u32, name: &str) -> io::Result<()> {
        self.event(json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}))
    }

    fn thread(&mut self, pid: u32, tid: u32, name: &str) -> io::Result<()> {
        self.event(json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}))
    }

    fn begin(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        self.event(json!({"name": name, "cat": "dprobe", "ph": "B", "ts": micros(t), "pid": pid, "tid": tid, "args": arguments(args)}))
    }

    fn end(&mut self, t: u64, pid: u32, tid: u32, args: &[Arg]) -> io::Result<()> {
        self.event(json!({"ph": "E", "ts": micros(t), "pid": pid, "tid": tid, "args": arguments(args)}))
    }

    fn instant(&mut self, t: u64, pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        self.event(json!({"name": name, "cat": "dprobe", "ph": "i", "s": "t", "ts": micros(t), "pid": pid, "tid": tid, "args": arguments(args)}))
    }

    fn counter(&mut self, t: u64, pid: u32, _index: usize, name: &str, value: u64) -> io::Result<()> {
        self.event(json!({"name": name, "ph": "C", "ts": micros(t), "pid": pid, "args": {"hits": value}}))
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}
