//! Registration codecs: what real fleets write into etcd, decoded into [`Instance`]s.
//!
//! | format | key | value |
//! |---|---|---|
//! | [`Format::Plain`] (go-zero) | `<prefix>/<leaseID or id>` | `host:port` |
//! | [`Format::EtcdNaming`] (grpc-go `naming/endpoints`) | `<target>/<addr>` | `{"Op":0,"Addr":"host:port","Metadata":null}` |
//! | [`Format::Kratos`] | `/microservices/<name>/<id>` | `{"id","name","version","metadata","endpoints":["grpc://host:port"]}` (`grpcs://` with TLS) |
//! | [`Format::GoMicro`] | `/micro/registry/<name>/<node>` | `{"name","version","metadata","nodes":[{"id","address","metadata"}]}` |
//!
//! [`Format::Auto`] (the default) tells them apart by shape: a value that is not JSON is plain,
//! a JSON object with `Addr` is etcd naming, with `nodes` go-micro, with `endpoints` kratos.
//! (`nodes` is looked for before `endpoints` because go-micro values have an `endpoints` field
//! too: its RPC method descriptions, or `null`.)
//! Decoding never panics, whatever the input; a value that does not decode is a
//! [`DecodeError`] naming the reason, and the resolver skips that key and keeps the others.
//!
//! # Examples
//!
//! ```
//! use switchboard_resolver::Format;
//!
//! let go_zero = Format::Auto.decode("user.rpc/7587", b"10.0.0.7:8080").unwrap();
//! assert_eq!(go_zero[0].addr, "10.0.0.7:8080");
//!
//! let kratos = br#"{"id":"a1","name":"user","version":"v1","metadata":{"weight":"3"},
//!                  "endpoints":["http://10.0.0.8:8000","grpc://10.0.0.8:9000?isSecure=false"]}"#;
//! let kratos = Format::Auto.decode("/microservices/user/a1", kratos).unwrap();
//! assert_eq!((kratos[0].addr.as_str(), kratos[0].weight), ("10.0.0.8:9000", 3));
//!
//! assert!(Format::Auto.decode("user.rpc/1", b"{not json").is_err());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::addr::{clip, validate};
use crate::instance::Instance;

/// How registration values are encoded. See the [module documentation](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// Detect each value's format from its shape.
    #[default]
    Auto,
    /// `host:port`, as go-zero writes.
    Plain,
    /// grpc-go etcd naming JSON: `{"Op":0,"Addr":"host:port","Metadata":…}`.
    EtcdNaming,
    /// kratos' etcd registry JSON.
    Kratos,
    /// go-micro's etcd registry JSON.
    GoMicro,
}

/// Why a registration value did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    reason: String,
}

impl DecodeError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A format name that is not one of `auto`, `plain`, `etcd-naming`, `kratos`, `go-micro`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown registration format `{0}` (expected auto, plain, etcd-naming, kratos or go-micro)"
)]
pub struct UnknownFormat(String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "auto" => Ok(Self::Auto),
            "plain" | "go-zero" | "gozero" => Ok(Self::Plain),
            "etcd-naming" | "etcd" | "grpc-go" => Ok(Self::EtcdNaming),
            "kratos" => Ok(Self::Kratos),
            "go-micro" | "gomicro" | "micro" => Ok(Self::GoMicro),
            _ => Err(UnknownFormat(clip(s))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Plain => "plain",
            Self::EtcdNaming => "etcd-naming",
            Self::Kratos => "kratos",
            Self::GoMicro => "go-micro",
        })
    }
}

impl Format {
    /// Decodes the registration stored at `key` into the instances it describes (one for most
    /// formats; kratos and go-micro values may list several endpoints, keyed `key#id`).
    pub fn decode(self, key: &str, value: &[u8]) -> Result<Vec<Instance>, DecodeError> {
        let text = std::str::from_utf8(value)
            .map_err(|e| DecodeError::new(format!("value is not UTF-8 ({e})")))?;
        let trimmed = text.trim_start();
        match self {
            Self::Plain => plain(key, text),
            Self::Auto if !trimmed.starts_with('{') => plain(key, text),
            _ => {
                let json: Value = serde_json::from_str(text)
                    .map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))?;
                let Value::Object(obj) = json else {
                    return Err(DecodeError::new("JSON value is not an object"));
                };
                let format = match self {
                    Self::Auto if obj.contains_key("Addr") => Self::EtcdNaming,
                    // Before `endpoints`: go-micro's registry.Service always has an `endpoints`
                    // field (its RPC methods as objects, or null), kratos' ServiceInstance never
                    // has `nodes`.
                    Self::Auto if obj.contains_key("nodes") => Self::GoMicro,
                    Self::Auto if obj.contains_key("endpoints") => Self::Kratos,
                    Self::Auto => {
                        return Err(DecodeError::new(
                            "JSON object of unknown shape (no `Addr`, `endpoints` or `nodes`)",
                        ));
                    }
                    other => other,
                };
                match format {
                    Self::EtcdNaming => etcd_naming(key, &obj),
                    Self::Kratos => kratos(key, &obj),
                    _ => go_micro(key, &obj),
                }
            }
        }
    }

    /// Encodes a registration of `addr` for Go clients of this format to read. `Auto` and
    /// `Plain` write go-zero's plain `host:port`; `EtcdNaming` writes grpc-go's JSON (read by
    /// both the old `naming` resolver and the newer `naming/endpoints` one). Kratos and go-micro
    /// registrations are written as their registries do.
    pub fn encode(
        self,
        name: &str,
        id: &str,
        addr: &str,
        metadata: &BTreeMap<String, String>,
    ) -> String {
        let meta = || {
            Value::Object(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        match self {
            Self::Auto | Self::Plain => addr.to_string(),
            // `null`, as etcd's own endpoints.Manager writes: grpc-go (1.33, Debian's, among
            // others) uses the address, metadata included, as a map key, and panics with
            // "hash of unhashable type" on the map a JSON object decodes to.
            Self::EtcdNaming => serde_json::json!({"Op": 0, "Addr": addr, "Metadata": null}).to_string(),
            // `grpcs://` for a server that serves TLS (metadata `secure=true`), as kratos writes.
            Self::Kratos => serde_json::json!({
                "id": id, "name": name, "version": metadata.get("version").cloned().unwrap_or_default(),
                "metadata": meta(),
                "endpoints": [if metadata.get("secure").is_some_and(|s| s == "true") {
                    format!("grpcs://{addr}")
                } else {
                    format!("grpc://{addr}")
                }],
            })
            .to_string(),
            Self::GoMicro => serde_json::json!({
                "name": name, "version": metadata.get("version").cloned().unwrap_or_default(),
                "metadata": meta(), "nodes": [{"id": id, "address": addr, "metadata": meta()}],
            })
            .to_string(),
        }
    }
}

fn plain(key: &str, text: &str) -> Result<Vec<Instance>, DecodeError> {
    let addr = validate(text).map_err(DecodeError::new)?;
    Ok(vec![Instance::new(key, addr)])
}

fn etcd_naming(key: &str, obj: &Map<String, Value>) -> Result<Vec<Instance>, DecodeError> {
    match obj.get("Op") {
        None | Some(Value::Null) => {}
        Some(op) if op.as_i64() == Some(0) => {}
        Some(op) => {
            return Err(DecodeError::new(format!(
                "`Op` is {} (only 0, Add, registers an address)",
                clip(&op.to_string())
            )));
        }
    }
    let addr = string_field(obj, "Addr")?;
    let addr = validate(addr).map_err(DecodeError::new)?;
    let mut metadata = BTreeMap::new();
    match obj.get("Metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => flatten_into(&mut metadata, m),
        Some(other) => {
            metadata.insert("metadata".to_string(), scalar(other));
        }
    }
    Ok(vec![Instance::new(key, addr).with_metadata(metadata)])
}

fn kratos(key: &str, obj: &Map<String, Value>) -> Result<Vec<Instance>, DecodeError> {
    let base = described(obj, &["id", "name", "version"])?;
    let endpoints = array_field(obj, "endpoints")?;
    let mut grpc = Vec::new();
    for endpoint in endpoints {
        let Value::String(url) = endpoint else {
            return Err(DecodeError::new("an entry of `endpoints` is not a string"));
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(DecodeError::new(format!(
                "endpoint `{}` has no scheme",
                clip(url)
            )));
        };
        if !scheme.eq_ignore_ascii_case("grpc") && !scheme.eq_ignore_ascii_case("grpcs") {
            continue;
        }
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let addr = validate(authority).map_err(DecodeError::new)?;
        let secure = scheme.eq_ignore_ascii_case("grpcs")
            || query
                .split('&')
                .any(|kv| kv.eq_ignore_ascii_case("isSecure=true"));
        grpc.push((addr, secure));
    }
    if grpc.is_empty() {
        return Err(DecodeError::new("no grpc:// endpoint in `endpoints`"));
    }
    let several = grpc.len() > 1;
    Ok(grpc
        .into_iter()
        .map(|(addr, secure)| {
            let mut metadata = base.clone();
            metadata.insert("secure".to_string(), secure.to_string());
            let key = if several {
                format!("{key}#{addr}")
            } else {
                key.to_string()
            };
            Instance::new(key, addr).with_metadata(metadata)
        })
        .collect())
}

fn go_micro(key: &str, obj: &Map<String, Value>) -> Result<Vec<Instance>, DecodeError> {
    let base = described(obj, &["name", "version"])?;
    let nodes = array_field(obj, "nodes")?;
    if nodes.is_empty() {
        return Err(DecodeError::new("`nodes` is empty"));
    }
    let several = nodes.len() > 1;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let Value::Object(node) = node else {
            return Err(DecodeError::new("an entry of `nodes` is not an object"));
        };
        let addr = validate(string_field(node, "address")?).map_err(DecodeError::new)?;
        let mut metadata = base.clone();
        merge_metadata(&mut metadata, node, "a node's `metadata`")?;
        let id = node.get("id").map(scalar).unwrap_or_else(|| addr.clone());
        metadata.insert("id".to_string(), id.clone());
        let key = if several {
            format!("{key}#{id}")
        } else {
            key.to_string()
        };
        out.push(Instance::new(key, addr).with_metadata(metadata));
    }
    Ok(out)
}

fn string_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, DecodeError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::new(format!("`{field}` is not a string"))),
        None => Err(DecodeError::new(format!("`{field}` is missing"))),
    }
}

fn array_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], DecodeError> {
    match obj.get(field) {
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(DecodeError::new(format!("`{field}` is not an array"))),
        None => Err(DecodeError::new(format!("`{field}` is missing"))),
    }
}

/// The service-level metadata of a kratos or go-micro value: the given descriptive `fields`
/// (id, name, version) merged with its `metadata` object.
fn described(
    obj: &Map<String, Value>,
    fields: &[&str],
) -> Result<BTreeMap<String, String>, DecodeError> {
    let mut out = BTreeMap::new();
    for field in fields {
        if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
            out.insert(field.to_string(), scalar(v));
        }
    }
    merge_metadata(&mut out, obj, "`metadata`")?;
    Ok(out)
}

/// Adds the entries of `obj["metadata"]` (absent or null: none) to `out`; `what` names it in
/// the error when it is not an object.
fn merge_metadata(
    out: &mut BTreeMap<String, String>,
    obj: &Map<String, Value>,
    what: &str,
) -> Result<(), DecodeError> {
    match obj.get("metadata") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) => {
            flatten_into(out, m);
            Ok(())
        }
        Some(_) => Err(DecodeError::new(format!("{what} is not an object"))),
    }
}

fn flatten_into(out: &mut BTreeMap<String, String>, obj: &Map<String, Value>) {
    for (k, v) in obj {
        out.insert(k.clone(), scalar(v));
    }
}

/// A JSON value as metadata text: strings as they are, anything else as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
