//! Perfetto's trace messages, the part dprobe writes: prost's structs generated at build time
//! from `proto/perfetto_trace.proto` (Perfetto's own names and field numbers, so the file is
//! the one schema); the build compiles it with `protox`, so building dprobe needs no `protoc`.
//! The schema's `Trace` is for reading a whole file back, which only the tests do; variant
//! names are the schema's.
#![allow(missing_docs, dead_code, clippy::enum_variant_names)]

include!(concat!(env!("OUT_DIR"), "/perfetto.protos.rs"));
