#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::onion_relay`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::onion_relay(data));
