//! Fuzz target `codec_go_micro`: see [`switchboard_fuzz::codec_go_micro`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::codec_go_micro(data));
