//! The bodies of switchboard's fuzz targets, one function per target, so that the stable test
//! run checks the same code on a fixed corpus (`tests/fuzz_bodies.rs` in the main workspace
//! includes this file) and `cargo fuzz` explores from there (`scripts/fuzz.sh`).
//!
//! Each body panics only when a property fails:
//!
//! - **Codecs** ([`codec_auto`], [`codec_plain`], [`codec_etcd_naming`], [`codec_kratos`],
//!   [`codec_go_micro`]): the input is `KEY\nVALUE` (no newline: the key `svc/1` and the whole
//!   input as the value). Decoding never panics; every instance decoded has a valid address,
//!   one that the plain codec reads back unchanged and that every format's encoder writes so
//!   that its decoder reads it back.
//! - **Config** ([`config_yaml`], [`config_toml`], [`service_config_json`]): parsing never
//!   panics; an accepted config passes validation again unchanged; a service config that parses
//!   is accepted inside a client config too; every error has a message.

use switchboard::ClientConfig;
use switchboard::service_config::ServiceConfig;
use switchboard_resolver::Format;

/// A target's body: runs one input, panics when a property fails.
pub type Body = fn(&[u8]);

/// Every target: its name (the `fuzz_targets/NAME.rs` file, and the `seeds/NAME` directory)
/// and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("codec_auto", codec_auto),
    ("codec_plain", codec_plain),
    ("codec_etcd_naming", codec_etcd_naming),
    ("codec_kratos", codec_kratos),
    ("codec_go_micro", codec_go_micro),
    ("config_yaml", config_yaml),
    ("config_toml", config_toml),
    ("service_config_json", service_config_json),
];

/// Decodes with [`Format::Auto`], which picks a codec by the value's shape.
pub fn codec_auto(data: &[u8]) {
    codec(Format::Auto, data);
}

/// Decodes with the plain (go-zero) codec.
pub fn codec_plain(data: &[u8]) {
    codec(Format::Plain, data);
}

/// Decodes with grpc-go's etcd naming codec.
pub fn codec_etcd_naming(data: &[u8]) {
    codec(Format::EtcdNaming, data);
}

/// Decodes with the kratos codec.
pub fn codec_kratos(data: &[u8]) {
    codec(Format::Kratos, data);
}

/// Decodes with the go-micro codec.
pub fn codec_go_micro(data: &[u8]) {
    codec(Format::GoMicro, data);
}

fn codec(format: Format, data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("svc/1".to_owned(), data),
    };
    let Ok(instances) = format.decode(&key, value) else {
        return;
    };
    for instance in &instances {
        assert!(
            !instance.addr.is_empty(),
            "{format}: empty address from {data:?}"
        );
        let plain = Format::Plain
            .decode(&instance.key, instance.addr.as_bytes())
            .unwrap_or_else(|e| {
                panic!(
                    "{format}: decoded {:?}, which plain refuses: {e}",
                    instance.addr
                )
            });
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].addr, instance.addr);
        for other in [Format::EtcdNaming, Format::Kratos, Format::GoMicro] {
            let encoded = other.encode("svc", "1", &instance.addr, &instance.metadata);
            let decoded = other
                .decode(&instance.key, encoded.as_bytes())
                .unwrap_or_else(|e| panic!("{other}: cannot read back {encoded}: {e}"));
            assert!(
                decoded.iter().any(|d| d.addr == instance.addr),
                "{other}: wrote {:?} as {encoded}, read back {decoded:?}",
                instance.addr
            );
        }
    }
}

/// Parses a client config as YAML, and the same text as JSON.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    client_config(ClientConfig::from_yaml(text));
    client_config(ClientConfig::from_json(text));
}

/// Parses a client config as TOML.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    client_config(ClientConfig::from_toml(text));
}

fn client_config(parsed: Result<ClientConfig, switchboard::Error>) {
    match parsed {
        Ok(config) => {
            let name = config.service_name();
            let again = config
                .validated()
                .unwrap_or_else(|e| panic!("an accepted config fails validation: {e}"));
            assert_eq!(again.service_name(), name);
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

/// Parses a gRPC service config (JSON).
pub fn service_config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ServiceConfig::parse(text) {
        Ok(_) => {
            let mut config = ClientConfig::endpoints(["127.0.0.1:8080"]);
            config.service_config = Some(text.to_owned());
            if let Err(e) = config.validated() {
                panic!("a service config that parses is refused in a client config: {e}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}
