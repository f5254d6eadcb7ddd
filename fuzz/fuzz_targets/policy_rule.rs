#![no_main]
//! Fuzz target: see `burrow_proto::fuzzing::policy_rule`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_proto::fuzzing::policy_rule(data));
