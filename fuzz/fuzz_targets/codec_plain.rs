//! Fuzz target `codec_plain`: see [`switchboard_fuzz::codec_plain`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::codec_plain(data));
