//! See `atrium_routing::fuzzing::rule`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atrium_routing::fuzzing::rule(data));
