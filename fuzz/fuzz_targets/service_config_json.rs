//! Fuzz target `service_config_json`: see [`switchboard_fuzz::service_config_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::service_config_json(data));
