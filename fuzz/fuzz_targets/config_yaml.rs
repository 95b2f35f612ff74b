//! Fuzz target `config_yaml`: see [`switchboard_fuzz::config_yaml`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::config_yaml(data));
