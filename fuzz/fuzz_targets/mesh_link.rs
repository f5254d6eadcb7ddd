#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::mesh_link`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::mesh_link(data));
