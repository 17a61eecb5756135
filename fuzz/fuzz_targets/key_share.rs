//! Fuzz target: see `slopn-proto/tests/fuzzing/mod.rs`, function `key_share`.
#![no_main]

#[path = "../../slopn-proto/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::key_share(data));
