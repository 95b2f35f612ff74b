//! Fuzz target `codec_auto`: see [`switchboard_fuzz::codec_auto`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::codec_auto(data));
