#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::channel_table`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::channel_table(data));
