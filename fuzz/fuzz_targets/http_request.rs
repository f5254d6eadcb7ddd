#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::http_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::http_request(data));
