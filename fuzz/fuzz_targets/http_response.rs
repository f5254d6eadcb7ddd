#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::http_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::http_response(data));
