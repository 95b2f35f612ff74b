//! Fuzz target `codec_etcd_naming`: see [`switchboard_fuzz::codec_etcd_naming`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::codec_etcd_naming(data));
