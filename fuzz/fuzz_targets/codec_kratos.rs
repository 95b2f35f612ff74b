//! Fuzz target `codec_kratos`: see [`switchboard_fuzz::codec_kratos`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::codec_kratos(data));
