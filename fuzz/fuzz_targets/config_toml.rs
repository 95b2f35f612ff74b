//! Fuzz target `config_toml`: see [`switchboard_fuzz::config_toml`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::config_toml(data));
