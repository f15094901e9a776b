//! See `atrium_data_plane::fuzzing::http1_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atrium_data_plane::fuzzing::http1_head(data));
