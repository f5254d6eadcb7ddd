#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::transfer_framing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::transfer_framing(data));
