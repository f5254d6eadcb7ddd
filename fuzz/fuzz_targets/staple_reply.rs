#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::staple_reply`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::staple_reply(data));
