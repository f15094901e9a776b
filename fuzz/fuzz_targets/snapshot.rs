//! See `atrium_data_plane::fuzzing::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atrium_data_plane::fuzzing::snapshot(data));
