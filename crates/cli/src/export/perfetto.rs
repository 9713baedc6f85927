//! The timeline as a Perfetto trace (`.pftrace`): a `Trace` is a sequence of `packet`
//! fields, so each packet is written as it comes (field 1, length-delimited) and the file is
//! a valid trace at every packet boundary. A process's track and each thread's track under
//! it are described once; events name their track by its uuid. With `--stack`, each event
//! refers to its callstack by an interned id: a function's name, a frame and a callstack are
//! each written once, in the interned data of the first packet that uses them.

use std::io::{self, Write};

use prost::Message;

use std::collections::HashMap;

use super::perfetto_proto::counter_descriptor::Unit;
use super::perfetto_proto::debug_annotation::{NameField, Value};
use super::perfetto_proto::trace_packet::{Data, OptionalTrustedPacketSequenceId, SequenceFlags};
use super::perfetto_proto::track_descriptor::StaticOrDynamicName;
use super::perfetto_proto::track_event::{self, CallstackField, CounterValueField, Type as TrackEventType};
use super::perfetto_proto::{
    Callstack, CounterDescriptor, DebugAnnotation, Frame, InternedData, InternedString, ProcessDescriptor,
    ThreadDescriptor, TracePacket, TrackDescriptor, TrackEvent,
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
    /// Interned so far: functions' names (a frame each) and callstacks, by their ids.
    frames: HashMap<String, u64>,
    callstacks: HashMap<Vec<u64>, u64>,
    /// What the next event's packet interns, and the callstack it refers to.
    interning: InternedData,
    callstack: Option<u64>,
}

impl<W: Write> Perfetto<W> {
    /// A trace written to `out`.
    pub fn new(out: W) -> Self {
        Perfetto {
            out,
            first: true,
            counters: Vec::new(),
            buffer: Vec::new(),
            frames: HashMap::new(),
            callstacks: HashMap::new(),
            interning: InternedData::default(),
            callstack: None,
        }
    }

    /// The id of the frame of function `name`, interned with the next event if new (a
    /// function's name and its frame share the id).
    fn frame(&mut self, name: &str) -> u64 {
        if let Some(&iid) = self.frames.get(name) {
            return iid;
        }
        let iid = self.frames.len() as u64 + 1;
        self.frames.insert(name.to_owned(), iid);
        let str = Some(name.as_bytes().to_vec());
        self.interning.function_names.push(InternedString { iid: Some(iid), str });
        self.interning.frames.push(Frame { iid: Some(iid), function_name_id: Some(iid) });
        iid
    }

    fn packet(&mut self, mut p: TracePacket) -> io::Result<()> {
        p.optional_trusted_packet_sequence_id =
            Some(OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(SEQUENCE));
        if std::mem::take(&mut self.first) {
            p.sequence_flags = Some(SequenceFlags::SeqIncrementalStateCleared as u32 | p.sequence_flags.unwrap_or(0));
        }
        self.buffer.clear();
        // `Trace.packet`, field 1, length-delimited.
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut self.buffer);
        prost::encoding::encode_varint(p.encoded_len() as u64, &mut self.buffer);
        p.encode(&mut self.buffer).map_err(io::Error::other)?;
        self.out.write_all(&self.buffer)
    }

    fn event(&mut self, t: u64, track: u64, kind: TrackEventType, name: Option<&str>, args: &[Arg]) -> io::Result<()> {
        // A stack is the next event's only; an end belongs to its begin, which carries it.
        let callstack = self.callstack.take().filter(|_| kind != TrackEventType::SliceEnd);
        let event = TrackEvent {
            categories: if kind == TrackEventType::Counter { Vec::new() } else { vec!["dprobe".into()] },
            name_field: name.map(|n| track_event::NameField::Name(n.to_owned())),
            r#type: Some(kind as i32),
            track_uuid: Some(track),
            counter_value_field: None,
            debug_annotations: args.iter().map(annotation).collect(),
            callstack_field: callstack.map(CallstackField::CallstackIid),
        };
        let interned = std::mem::take(&mut self.interning);
        let new = !(interned.function_names.is_empty() && interned.callstacks.is_empty());
        let packet = TracePacket {
            timestamp: Some(t),
            data: Some(Data::TrackEvent(event)),
            interned_data: new.then_some(interned),
            sequence_flags: callstack.map(|_| SequenceFlags::SeqNeedsIncrementalState as u32),
            ..Default::default()
        };
        self.packet(packet)
    }

    fn track(&mut self, d: TrackDescriptor) -> io::Result<()> {
        self.packet(TracePacket { data: Some(Data::TrackDescriptor(d)), ..Default::default() })
    }
}

fn annotation((name, value): &Arg) -> DebugAnnotation {
    let value = match value {
        ArgValue::Int(v) => Value::IntValue(*v),
        ArgValue::Uint(v) => Value::UintValue(*v),
        ArgValue::Str(s) => Value::StringValue(s.clone()),
    };
    DebugAnnotation { name_field: Some(NameField::Name(name.clone())), value: Some(value) }
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

    fn stack(&mut self, frames: &[String]) -> io::Result<()> {
        let ids: Vec<u64> = frames.iter().map(|f| self.frame(f)).collect();
        let iid = match self.callstacks.get(&ids) {
            Some(&iid) => iid,
            None => {
                let iid = self.callstacks.len() as u64 + 1;
                self.interning.callstacks.push(Callstack { iid: Some(iid), frame_ids: ids.clone() });
                self.callstacks.insert(ids, iid);
                iid
            }
        };
        self.callstack = Some(iid);
        Ok(())
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
            let counter = CounterDescriptor { unit: Some(Unit::Count as i32), ..Default::default() };
            self.track(TrackDescriptor {
                uuid: Some(counter_track(index)),
                static_or_dynamic_name: Some(StaticOrDynamicName::Name(name.into())),
                counter: Some(counter),
                ..Default::default()
            })?;
        }
        let event = TrackEvent {
            r#type: Some(TrackEventType::Counter as i32),
            track_uuid: Some(counter_track(index)),
            counter_value_field: Some(CounterValueField::CounterValue(value as i64)),
            ..Default::default()
        };
        self.packet(TracePacket { timestamp: Some(t), data: Some(Data::TrackEvent(event)), ..Default::default() })
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
