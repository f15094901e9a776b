//! See `atrium_data_plane::fuzzing::uplink_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atrium_data_plane::fuzzing::uplink_frames(data));
