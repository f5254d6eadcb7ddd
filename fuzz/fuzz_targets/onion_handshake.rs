#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::onion_handshake`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::onion_handshake(data));
