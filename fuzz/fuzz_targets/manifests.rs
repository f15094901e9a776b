//! See `atrium_model::fuzzing::manifests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atrium_model::fuzzing::manifests(data));
