#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::mesh_packet`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::mesh_packet(data));
