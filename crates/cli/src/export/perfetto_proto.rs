//! Perfetto's trace messages, the part dprobe writes, as prost structs written by hand to
//! match `proto/perfetto_trace.proto` (Perfetto's own names and field numbers; a test checks
//! every field against that file), so that building dprobe needs no `protoc`. A `oneof`
//! with the members dprobe uses is written as optional fields: on the wire a oneof member is
//! an optional field, and dprobe sets one member at most.

/// `perfetto.protos.Trace`: a file is a sequence of packets. dprobe writes it packet by
/// packet (`perfetto.rs`); reading a whole file back (the tests) decodes this.
#[allow(dead_code)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct Trace {
    /// The packets.
    #[prost(message, repeated, tag = "1")]
    pub packet: Vec<TracePacket>,
}

/// `perfetto.protos.TracePacket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TracePacket {
    /// When (ns).
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    /// An event on a track (`data` oneof).
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    /// A track's description (`data` oneof).
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
    /// The writer's sequence.
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    /// `SequenceFlags` bits.
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    /// Names, frames and callstacks that later packets of the sequence refer to by id.
    #[prost(message, optional, tag = "12")]
    pub interned_data: Option<InternedData>,
}

/// `TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`.
pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
/// `TracePacket.SequenceFlags.SEQ_NEEDS_INCREMENTAL_STATE`: the packet refers to interned data.
pub const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;

/// `perfetto.protos.InternedData`: what a sequence's packets refer to by id (an `iid`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternedData {
    /// Functions' names.
    #[prost(message, repeated, tag = "5")]
    pub function_names: Vec<InternedString>,
    /// Frames of callstacks.
    #[prost(message, repeated, tag = "6")]
    pub frames: Vec<Frame>,
    /// Callstacks.
    #[prost(message, repeated, tag = "7")]
    pub callstacks: Vec<Callstack>,
}

/// `perfetto.protos.InternedString`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternedString {
    /// Its id (from 1).
    #[prost(uint64, optional, tag = "1")]
    pub iid: Option<u64>,
    /// The string.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub str: Option<Vec<u8>>,
}

/// `perfetto.protos.Frame`: a function of a callstack.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// Its id (from 1).
    #[prost(uint64, optional, tag = "1")]
    pub iid: Option<u64>,
    /// The id of its function's name.
    #[prost(uint64, optional, tag = "2")]
    pub function_name_id: Option<u64>,
}

/// `perfetto.protos.Callstack`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Callstack {
    /// Its id (from 1).
    #[prost(uint64, optional, tag = "1")]
    pub iid: Option<u64>,
    /// Its frames' ids, the outermost first (not packed: the schema is proto2's).
    #[prost(uint64, repeated, packed = "false", tag = "2")]
    pub frame_ids: Vec<u64>,
}

/// `perfetto.protos.TrackEvent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackEvent {
    /// Categories.
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    /// The slice's or instant's name (`name_field` oneof).
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    /// Begin, end, instant or counter.
    #[prost(enumeration = "TrackEventType", optional, tag = "9")]
    pub r#type: Option<i32>,
    /// The track.
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    /// A counter's new value (`counter_value_field` oneof).
    #[prost(int64, optional, tag = "30")]
    pub counter_value: Option<i64>,
    /// Arguments.
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    /// The stack at the event, by its interned id (`callstack_field` oneof).
    #[prost(uint64, optional, tag = "56")]
    pub callstack_iid: Option<u64>,
}

/// `perfetto.protos.TrackEvent.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TrackEventType {
    /// Unset.
    Unspecified = 0,
    /// A slice begins.
    SliceBegin = 1,
    /// The innermost open slice ends.
    SliceEnd = 2,
    /// A point in time.
    Instant = 3,
    /// A counter's value.
    Counter = 4,
}

/// `perfetto.protos.TrackDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackDescriptor {
    /// The track's id.
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    /// The track it is shown under.
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
    /// Its name (`static_or_dynamic_name` oneof).
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// A process's track.
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessDescriptor>,
    /// A thread's track.
    #[prost(message, optional, tag = "4")]
    pub thread: Option<ThreadDescriptor>,
    /// A counter track.
    #[prost(message, optional, tag = "8")]
    pub counter: Option<CounterDescriptor>,
}

/// `perfetto.protos.ProcessDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessDescriptor {
    /// The process.
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    /// Its command line.
    #[prost(string, repeated, tag = "2")]
    pub cmdline: Vec<String>,
    /// Its name.
    #[prost(string, optional, tag = "6")]
    pub process_name: Option<String>,
}

/// `perfetto.protos.ThreadDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThreadDescriptor {
    /// Its process.
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    /// The thread.
    #[prost(int64, optional, tag = "2")]
    pub tid: Option<i64>,
    /// Its name.
    #[prost(string, optional, tag = "5")]
    pub thread_name: Option<String>,
}

/// `perfetto.protos.CounterDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CounterDescriptor {
    /// `Unit`.
    #[prost(int32, optional, tag = "3")]
    pub unit: Option<i32>,
    /// A unit of its own.
    #[prost(string, optional, tag = "6")]
    pub unit_name: Option<String>,
    /// Values are increments.
    #[prost(bool, optional, tag = "5")]
    pub is_incremental: Option<bool>,
}

/// `CounterDescriptor.Unit.UNIT_COUNT`.
pub const UNIT_COUNT: i32 = 2;

/// `perfetto.protos.DebugAnnotation`: one named argument (`name_field` and `value` oneofs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DebugAnnotation {
    /// The argument's name.
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
    /// A boolean.
    #[prost(bool, optional, tag = "2")]
    pub bool_value: Option<bool>,
    /// An unsigned integer.
    #[prost(uint64, optional, tag = "3")]
    pub uint_value: Option<u64>,
    /// A signed integer.
    #[prost(int64, optional, tag = "4")]
    pub int_value: Option<i64>,
    /// A floating-point number.
    #[prost(double, optional, tag = "5")]
    pub double_value: Option<f64>,
    /// A string.
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
}

#[cfg(test)]
mod tests {
    //! The structs against the vendored schema: for each message, every field set alone
    //! must be written with the number and wire type the `.proto` gives its name.
    use super::*;
    use prost::Message;
    use std::collections::HashMap;

    const SCHEMA: &str = include_str!("../../proto/perfetto_trace.proto");

    /// message -> field -> (number, type) from the `.proto` text.
    fn schema() -> HashMap<String, HashMap<String, (u32, String)>> {
        let mut all: HashMap<String, HashMap<String, (u32, String)>> = HashMap::new();
        let mut stack: Vec<String> = Vec::new();
        for line in SCHEMA.lines().map(str::trim) {
            let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
            match words.as_slice() {
                ["message", name, "{"] => stack.push((*name).to_owned()),
                ["enum", ..] | ["oneof", ..] => stack.push(String::new()),
                ["}"] | ["};"] => {
                    stack.pop();
                }
                [.., ty, name, "=", number] if line.ends_with(';') => {
                    let (ty, name) = (ty.to_string(), name.to_string());
                    let message = stack.iter().rev().find(|m| !m.is_empty()).cloned().unwrap_or_default();
                    if !ty.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        all.entry(message).or_default().insert(name, (number.parse().unwrap(), ty));
                    }
                }
                [name, "=", _] if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {}
                _ => {}
            }
        }
        all
    }

    /// The wire type protobuf uses for a field of `ty` (a message's name: length-delimited).
    fn wire_type(ty: &str) -> u64 {
        match ty {
            "double" => 1,
            "string" | "bytes" => 2,
            "uint64" | "uint32" | "int64" | "int32" | "bool" => 0,
            "Type" | "Unit" => 0,
            _ => 2,
        }
    }

    /// The first key of `bytes`: (field number, wire type).
    fn first_key(bytes: &[u8]) -> (u32, u64) {
        let key = prost::encoding::decode_varint(&mut &bytes[..]).unwrap();
        ((key >> 3) as u32, key & 7)
    }

    fn check(schema: &HashMap<String, HashMap<String, (u32, String)>>, message: &str, field: &str, bytes: Vec<u8>) {
        let fields = schema.get(message).unwrap_or_else(|| panic!("no message {message} in the schema"));
        let (number, ty) = fields.get(field).unwrap_or_else(|| panic!("no field {message}.{field}"));
        assert_eq!(first_key(&bytes), (*number, wire_type(ty)), "{message}.{field}");
    }

    #[test]
    fn every_field_has_the_schemas_number_and_type() {
        let s = schema();
        let mut checked = 0;
        let mut c = |message: &str, field: &str, bytes: Vec<u8>| {
            check(&s, message, field, bytes);
            checked += 1;
        };
        c("Trace", "packet", Trace { packet: vec![TracePacket::default()] }.encode_to_vec());
        let p = TracePacket::default;
        c("TracePacket", "timestamp", TracePacket { timestamp: Some(1), ..p() }.encode_to_vec());
        c(
            "TracePacket",
            "track_event",
            TracePacket { track_event: Some(TrackEvent::default()), ..p() }.encode_to_vec(),
        );
        let d = Some(TrackDescriptor::default());
        c("TracePacket", "track_descriptor", TracePacket { track_descriptor: d, ..p() }.encode_to_vec());
        let id = Some(1);
        c(
            "TracePacket",
            "trusted_packet_sequence_id",
            TracePacket { trusted_packet_sequence_id: id, ..p() }.encode_to_vec(),
        );
        c("TracePacket", "sequence_flags", TracePacket { sequence_flags: Some(1), ..p() }.encode_to_vec());
        let i = Some(InternedData::default());
        c("TracePacket", "interned_data", TracePacket { interned_data: i, ..p() }.encode_to_vec());
        let id = InternedData::default;
        let names = vec![InternedString::default()];
        c("InternedData", "function_names", InternedData { function_names: names, ..id() }.encode_to_vec());
        c("InternedData", "frames", InternedData { frames: vec![Frame::default()], ..id() }.encode_to_vec());
        let stacks = vec![Callstack::default()];
        c("InternedData", "callstacks", InternedData { callstacks: stacks, ..id() }.encode_to_vec());
        c("InternedString", "iid", InternedString { iid: Some(1), str: None }.encode_to_vec());
        c("InternedString", "str", InternedString { iid: None, str: Some(b"f".to_vec()) }.encode_to_vec());
        c("Frame", "iid", Frame { iid: Some(1), function_name_id: None }.encode_to_vec());
        c("Frame", "function_name_id", Frame { iid: None, function_name_id: Some(1) }.encode_to_vec());
        c("Callstack", "iid", Callstack { iid: Some(1), frame_ids: Vec::new() }.encode_to_vec());
        c("Callstack", "frame_ids", Callstack { iid: None, frame_ids: vec![1, 2] }.encode_to_vec());
        let e = TrackEvent::default;
        c("TrackEvent", "categories", TrackEvent { categories: vec!["c".into()], ..e() }.encode_to_vec());
        c("TrackEvent", "name", TrackEvent { name: Some("n".into()), ..e() }.encode_to_vec());
        c("TrackEvent", "type", TrackEvent { r#type: Some(1), ..e() }.encode_to_vec());
        c("TrackEvent", "track_uuid", TrackEvent { track_uuid: Some(1), ..e() }.encode_to_vec());
        c("TrackEvent", "counter_value", TrackEvent { counter_value: Some(1), ..e() }.encode_to_vec());
        c("TrackEvent", "callstack_iid", TrackEvent { callstack_iid: Some(1), ..e() }.encode_to_vec());
        let a = vec![DebugAnnotation::default()];
        c("TrackEvent", "debug_annotations", TrackEvent { debug_annotations: a, ..e() }.encode_to_vec());
        let t = TrackDescriptor::default;
        c("TrackDescriptor", "uuid", TrackDescriptor { uuid: Some(1), ..t() }.encode_to_vec());
        c("TrackDescriptor", "parent_uuid", TrackDescriptor { parent_uuid: Some(1), ..t() }.encode_to_vec());
        c("TrackDescriptor", "name", TrackDescriptor { name: Some("n".into()), ..t() }.encode_to_vec());
        let pd = Some(ProcessDescriptor::default());
        c("TrackDescriptor", "process", TrackDescriptor { process: pd, ..t() }.encode_to_vec());
        let td = Some(ThreadDescriptor::default());
        c("TrackDescriptor", "thread", TrackDescriptor { thread: td, ..t() }.encode_to_vec());
        let cd = Some(CounterDescriptor::default());
        c("TrackDescriptor", "counter", TrackDescriptor { counter: cd, ..t() }.encode_to_vec());
        let pd = ProcessDescriptor::default;
        c("ProcessDescriptor", "pid", ProcessDescriptor { pid: Some(1), ..pd() }.encode_to_vec());
        c("ProcessDescriptor", "cmdline", ProcessDescriptor { cmdline: vec!["a".into()], ..pd() }.encode_to_vec());
        let name = Some("n".into());
        c("ProcessDescriptor", "process_name", ProcessDescriptor { process_name: name, ..pd() }.encode_to_vec());
        let td = ThreadDescriptor::default;
        c("ThreadDescriptor", "pid", ThreadDescriptor { pid: Some(1), ..td() }.encode_to_vec());
        c("ThreadDescriptor", "tid", ThreadDescriptor { tid: Some(1), ..td() }.encode_to_vec());
        let name = Some("n".into());
        c("ThreadDescriptor", "thread_name", ThreadDescriptor { thread_name: name, ..td() }.encode_to_vec());
        let cd = CounterDescriptor::default;
        c("CounterDescriptor", "unit", CounterDescriptor { unit: Some(UNIT_COUNT), ..cd() }.encode_to_vec());
        c("CounterDescriptor", "unit_name", CounterDescriptor { unit_name: Some("u".into()), ..cd() }.encode_to_vec());
        let inc = Some(true);
        c("CounterDescriptor", "is_incremental", CounterDescriptor { is_incremental: inc, ..cd() }.encode_to_vec());
        let da = DebugAnnotation::default;
        c("DebugAnnotation", "name", DebugAnnotation { name: Some("n".into()), ..da() }.encode_to_vec());
        c("DebugAnnotation", "bool_value", DebugAnnotation { bool_value: Some(true), ..da() }.encode_to_vec());
        c("DebugAnnotation", "uint_value", DebugAnnotation { uint_value: Some(1), ..da() }.encode_to_vec());
        c("DebugAnnotation", "int_value", DebugAnnotation { int_value: Some(1), ..da() }.encode_to_vec());
        c("DebugAnnotation", "double_value", DebugAnnotation { double_value: Some(1.0), ..da() }.encode_to_vec());
        let sv = Some("s".into());
        c("DebugAnnotation", "string_value", DebugAnnotation { string_value: sv, ..da() }.encode_to_vec());
        let fields_in_schema: usize = s.values().map(HashMap::len).sum();
        assert_eq!(checked, fields_in_schema, "every field of the schema has its struct field, and no more");
    }

    #[test]
    fn the_schemas_enum_values_are_the_structs() {
        assert!(SCHEMA.contains("TYPE_SLICE_BEGIN = 1;") && SCHEMA.contains("TYPE_SLICE_END = 2;"));
        assert!(SCHEMA.contains("TYPE_INSTANT = 3;") && SCHEMA.contains("TYPE_COUNTER = 4;"));
        assert_eq!((TrackEventType::SliceBegin as i32, TrackEventType::Counter as i32), (1, 4));
        assert!(SCHEMA.contains("UNIT_COUNT = 2;") && UNIT_COUNT == 2);
        assert!(SCHEMA.contains("SEQ_INCREMENTAL_STATE_CLEARED = 1;") && SEQ_INCREMENTAL_STATE_CLEARED == 1);
        assert!(SCHEMA.contains("SEQ_NEEDS_INCREMENTAL_STATE = 2;") && SEQ_NEEDS_INCREMENTAL_STATE == 2);
    }
}
