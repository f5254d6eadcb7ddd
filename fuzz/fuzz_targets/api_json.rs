#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::api_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::api_json(data));
