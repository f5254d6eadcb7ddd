#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::mux`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::mux(data));
