#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::node_record`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::node_record(data));
