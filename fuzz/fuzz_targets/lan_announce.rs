#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::lan_announce`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::lan_announce(data));
