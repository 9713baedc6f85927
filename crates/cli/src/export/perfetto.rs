//! The timeline as a Perfetto trace (`.pftrace`): a `Trace` is a sequence of `packet`
//! fields, so each packet is written as it comes (field 1, length-delimited) and the file is
//! a valid trace at every packet boundary. A process's track and each thread's track under
//! it are described once; events name their track by its uuid.

use std::io::{self, Write};

use prost::Message;

use super::perfetto_proto::{
    CounterDescriptor, DebugAnnotation, ProcessDescriptor, ThreadDescriptor, TracePacket, TrackDescriptor, TrackEvent,
    TrackEventType, SEQ_INCREMENTAL_STATE_CLEARED, UNIT_COUNT,
};
use super::timeline::{Arg, ArgValue, TimelineWriter};

/// The one sequence dprobe writes on.
const SEQUENCE: u32 = 1;

/// Track uuids: a kind in the top byte, the process, thread or probe below.
fn process_track(pid: u32) -> u64 {
    (1 << 56) | u64::from(pid)
}
fn thread_track(tid: u32) -> u64 {
    (2 << 56) | u64::from(tid)
}
fn counter_track(index: usize) -> u64 {
    (3 << 56) | index as u64
}

/// A Perfetto trace on `W`.
pub struct Perfetto<W: Write> {
    out: W,
    first: bool,
    counters: Vec<bool>,
    buffer: Vec<u8>,
}

impl<W: Write> Perfetto<W> {
    /// A trace written to `out`.
    pub fn new(out: W) -> Self {
        Perfetto { out, first: true, counters: Vec::new(), buffer: Vec::new() }
    }

    fn packet(&mut self, mut p: TracePacket) -> io::Result<()> {
        p.trusted_packet_sequence_id = Some(SEQUENCE);
        if std::mem::take(&mut self.first) {
            p.sequence_flags = Some(SEQ_INCREMENTAL_STATE_CLEARED);
        }
        self.buffer.clear();
        // `Trace.packet`, field 1, length-delimited.
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut self.buffer);
        prost::encoding::encode_varint(p.encoded_len() as u64, &mut self.buffer);
        p.encode(&mut self.buffer).map_err(io::Error::other)?;
        self.out.write_all(&self.buffer)
    }

    fn event(&mut self, t: u64, track: u64, kind: TrackEventType, name: Option<&str>, args: &[Arg]) -> io::Result<()> {
        let event = TrackEvent {
            categories: if kind == TrackEventType::Counter { Vec::new() } else { vec!["dprobe".into()] },
            name: name.map(str::to_owned),
            r#type: Some(kind as i32),
            track_uuid: Some(track),
            counter_value: None,
            debug_annotations: args.iter().map(annotation).collect(),
        };
        self.packet(TracePacket { timestamp: Some(t), track_event: Some(event), ..Default::default() })
    }

    fn track(&mut self, d: TrackDescriptor) -> io::Result<()> {
        self.packet(TracePacket { track_descriptor: Some(d), ..Default::default() })
    }
}

fn annotation((name, value): &Arg) -> DebugAnnotation {
    let mut a = DebugAnnotation { name: Some(name.clone()), ..Default::default() };
    match value {
        ArgValue::Int(v) => a.int_value = Some(*v),
        ArgValue::Uint(v) => a.uint_value = Some(*v),
        ArgValue::Str(s) => a.string_value = Some(s.clone()),
    }
    a
}

impl<W: Write> TimelineWriter for Perfetto<W> {
    fn process(&mut self, pid: u32, name: &str) -> io::Result<()> {
        let process = ProcessDescriptor { pid: Some(pid as i32), cmdline: Vec::new(), process_name: Some(name.into()) };
        self.track(TrackDescriptor { uuid: Some(process_track(pid)), process: Some(process), ..Default::default() })
    }

    fn thread(&mut self, pid: u32, tid: u32, name: &str) -> io::Result<()> {
        let thread =
            ThreadDescriptor { pid: Some(pid as i32), tid: Some(i64::from(tid)), thread_name: Some(name.into()) };
        self.track(TrackDescriptor {
            uuid: Some(thread_track(tid)),
            parent_uuid: Some(process_track(pid)),
            thread: Some(thread),
            ..Default::default()
        })
    }

    fn begin(&mut self, t: u64, _pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        self.event(t, thread_track(tid), TrackEventType::SliceBegin, Some(name), args)
    }

    fn end(&mut self, t: u64, _pid: u32, tid: u32, args: &[Arg]) -> io::Result<()> {
        self.event(t, thread_track(tid), TrackEventType::SliceEnd, None, args)
    }

    fn instant(&mut self, t: u64, _pid: u32, tid: u32, name: &str, args: &[Arg]) -> io::Result<()> {
        self.event(t, thread_track(tid), TrackEventType::Instant, Some(name), args)
    }

    fn counter(&mut self, t: u64, _pid: u32, index: usize, name: &str, value: u64) -> io::Result<()> {
        if self.counters.len() <= index {
            self.counters.resize(index + 1, false);
        }
        if !std::mem::replace(&mut self.counters[index], true) {
            let counter = CounterDescriptor { unit: Some(UNIT_COUNT), ..Default::default() };
            self.track(TrackDescriptor {
                uuid: Some(counter_track(index)),
                name: Some(name.into()),
                counter: Some(counter),
                ..Default::default()
            })?;
        }
        let mut event = TrackEvent {
            r#type: Some(TrackEventType::Counter as i32),
            track_uuid: Some(counter_track(index)),
            ..Default::default()
        };
        event.counter_value = Some(value as i64);
        self.packet(TracePacket { timestamp: Some(t), track_event: Some(event), ..Default::default() })
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
