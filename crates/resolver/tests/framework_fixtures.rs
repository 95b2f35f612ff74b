//! Registrations exactly as go-zero, kratos, go-micro and etcd's gRPC naming write them into
//! etcd (`tests/fixtures/*.json`, generated from the frameworks' own code; `tests/fixtures/
//! README.md` names the source of every field) decode to the instances they describe, with the
//! format told from the value alone; and what switchboard writes in each format has the shape
//! those frameworks' Go readers accept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};
use switchboard_resolver::{Format, Instance};

/// One `tests/fixtures/<framework>.json`.
#[derive(Debug, Deserialize)]
struct Fixture {
    framework: String,
    format: String,
    sources: Vec<String>,
    records: Vec<Record>,
}

/// One registration: a key and its value as the framework writes them.
#[derive(Debug, Deserialize)]
struct Record {
    name: String,
    source: String,
    note: String,
    key: String,
    value: String,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Expect {
    format: String,
    #[serde(default)]
    instances: Vec<Expected>,
    /// When set, the value must not decode and the reason must contain this.
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Expected {
    key: String,
    addr: String,
    weight: u32,
    /// Entries the decoded metadata must have (it may have more).
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

const FRAMEWORKS: [&str; 4] = ["etcd-naming", "go-micro", "go-zero", "kratos"];

/// The explicit formats; exactly one of them decodes any real registration.
const EXPLICIT: [Format; 4] = [
    Format::Plain,
    Format::EtcdNaming,
    Format::Kratos,
    Format::GoMicro,
];

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fixtures: Vec<Fixture> = FRAMEWORKS
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let fixture: Fixture = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
            assert_eq!(fixture.framework, *name, "{}", path.display());
            fixture
        })
        .collect();
    for fixture in &fixtures {
        assert!(
            !fixture.records.is_empty(),
            "{}: no records",
            fixture.framework
        );
        assert!(
            fixture.sources.iter().all(|s| names_a_commit(s)),
            "{}: every source names the commit it was read at",
            fixture.framework
        );
        for r in &fixture.records {
            assert!(
                !r.name.is_empty() && !r.note.is_empty() && !r.source.is_empty(),
                "{}: record without name, note or source",
                fixture.framework
            );
            assert_eq!(
                r.expect.format, fixture.format,
                "{}/{}: one format per file",
                fixture.framework, r.name
            );
        }
    }
    fixtures
}

/// `owner/repo@<40 hex digits> …`, or the one Debian package source.
fn names_a_commit(source: &str) -> bool {
    source.starts_with("Debian ")
        || source.split_once('@').is_some_and(|(_, rest)| {
            rest.as_bytes()
                .get(..40)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        })
}

fn format_of(name: &str) -> Format {
    name.parse()
        .unwrap_or_else(|e| panic!("fixture format `{name}`: {e}"))
}

fn records() -> Vec<(String, Record)> {
    fixtures()
        .into_iter()
        .flat_map(|f| {
            let framework = f.framework;
            f.records
                .into_iter()
                .map(move |r| (format!("{framework}/{}", r.name), r))
        })
        .collect()
}

#[test]
fn every_registration_decodes_to_its_instances() {
    for (what, r) in records() {
        let format = format_of(&r.expect.format);
        let explicit = format.decode(&r.key, r.value.as_bytes());
        let auto = Format::Auto.decode(&r.key, r.value.as_bytes());
        assert_eq!(auto, explicit, "{what}: auto-detection decodes as {format}");
        if let Some(reason) = &r.expect.error {
            let err = explicit.expect_err(&what);
            assert!(err.reason().contains(reason.as_str()), "{what}: {err}");
            continue;
        }
        let got = explicit.unwrap_or_else(|e| panic!("{what}: {e}\n  value: {}", r.value));
        assert_eq!(got.len(), r.expect.instances.len(), "{what}: {got:?}");
        for (instance, want) in got.iter().zip(&r.expect.instances) {
            assert_eq!(instance.key, want.key, "{what}: key");
            assert_eq!(instance.addr, want.addr, "{what}: addr");
            assert_eq!(instance.weight, want.weight, "{what}: weight");
            for (k, v) in &want.metadata {
                assert_eq!(
                    instance.metadata.get(k),
                    Some(v),
                    "{what}: metadata `{k}` in {:?}",
                    instance.metadata
                );
            }
        }
    }
}

#[test]
fn the_format_is_told_from_the_value() {
    for (what, r) in records() {
        let decoding: Vec<Format> = EXPLICIT
            .into_iter()
            .filter(|f| f.decode(&r.key, r.value.as_bytes()).is_ok())
            .collect();
        if r.expect.error.is_some() {
            // Nothing decodes it; that auto-detection chose the right format (and so the right
            // reason) is checked by `every_registration_decodes_to_its_instances`.
            assert!(decoding.is_empty(), "{what}: {decoding:?}");
        } else {
            assert_eq!(decoding, [format_of(&r.expect.format)], "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the Go readers accept: the Go types they unmarshal into, checked with encoding/json's
// rules, and what they then read from them.

/// A Go type, as far as `json.Unmarshal` cares.
#[derive(Clone, Copy)]
enum Go {
    String,
    Uint8,
    Interface,
    MapStringString,
    Slice(&'static Go),
    /// A struct (or a pointer to one): JSON key (matched case-insensitively, as Go does) and type.
    Struct(&'static [(&'static str, Go)]),
}

/// kratos registry/registry.go ServiceInstance (v2.9.2, v3.0.0).
const KRATOS_SERVICE_INSTANCE: Go = Go::Struct(&[
    ("id", Go::String),
    ("name", Go::String),
    ("version", Go::String),
    ("metadata", Go::MapStringString),
    ("endpoints", Go::Slice(&Go::String)),
]);

/// go-micro registry/registry.go Value, Endpoint, Node, Service (v4.9.0 to v6).
const MICRO_VALUE: Go = Go::Struct(&[
    ("name", Go::String),
    ("type", Go::String),
    ("values", Go::Slice(&MICRO_VALUE_LEAF)),
]);
/// Value trees are three levels deep at most (server/extractor.go stops at depth 3); the
/// deepest level is checked as a Value without children.
const MICRO_VALUE_LEAF: Go = Go::Struct(&[
    ("name", Go::String),
    ("type", Go::String),
    ("values", Go::Interface),
]);
const MICRO_ENDPOINT: Go = Go::Struct(&[
    ("name", Go::String),
    ("request", MICRO_VALUE),
    ("response", MICRO_VALUE),
    ("metadata", Go::MapStringString),
]);
const MICRO_NODE: Go = Go::Struct(&[
    ("id", Go::String),
    ("address", Go::String),
    ("metadata", Go::MapStringString),
]);
const MICRO_SERVICE: Go = Go::Struct(&[
    ("name", Go::String),
    ("version", Go::String),
    ("metadata", Go::MapStringString),
    ("endpoints", Go::Slice(&MICRO_ENDPOINT)),
    ("nodes", Go::Slice(&MICRO_NODE)),
]);

/// etcd client/v3/naming/endpoints/internal/update.go Update (and grpc-go's old naming.Update).
const ETCD_NAMING_UPDATE: Go = Go::Struct(&[
    ("Op", Go::Uint8),
    ("Addr", Go::String),
    ("Metadata", Go::Interface),
]);

/// Whether `json.Unmarshal` into `go` succeeds: `null` is accepted for every type (it leaves
/// strings and numbers alone and sets maps, slices, pointers and interfaces to nil), unknown
/// keys are ignored, and any other mismatch is an `*json.UnmarshalTypeError`.
fn unmarshal_ok(value: &Value, go: Go, at: &str) -> Result<(), String> {
    match (go, value) {
        (_, Value::Null) | (Go::Interface, _) | (Go::String, Value::String(_)) => Ok(()),
        (Go::Uint8, Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 255) => Ok(()),
        (Go::MapStringString, Value::Object(m)) => {
            match m.iter().find(|(_, v)| !v.is_string() && !v.is_null()) {
                Some((k, _)) => Err(format!("{at}.{k}: not a string (map[string]string)")),
                None => Ok(()),
            }
        }
        (Go::Slice(elem), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| unmarshal_ok(item, *elem, &format!("{at}[{i}]"))),
        (Go::Struct(fields), Value::Object(obj)) => {
            for (key, v) in obj {
                if let Some((name, ty)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)) {
                    unmarshal_ok(v, *ty, &format!("{at}.{name}"))?;
                }
            }
            Ok(())
        }
        _ => Err(format!("{at}: cannot unmarshal {value} into this Go type")),
    }
}

fn object(value: &str, what: &str) -> Map<String, Value> {
    match serde_json::from_str(value) {
        Ok(Value::Object(obj)) => obj,
        other => panic!("{what}: not a JSON object: {other:?}\n  {value}"),
    }
}

/// kratos internal/endpoint/endpoint.go ParseEndpoint(endpoints, scheme): the host of the first
/// endpoint whose URL scheme is `scheme`, or "" (the resolver then skips the instance). With
/// `legacy_secure`, also kratos v2.1 to v2.3's extra condition `IsSecure(u) == isSecure`.
fn kratos_parse_endpoint(endpoints: &[Value], scheme: &str, legacy_secure: Option<bool>) -> String {
    for endpoint in endpoints {
        let Some(url) = endpoint.as_str() else {
            continue;
        };
        let Some((s, rest)) = url.split_once("://") else {
            continue;
        };
        let (authority, tail) = rest
            .find(['/', '?', '#'])
            .map_or((rest, ""), |i| rest.split_at(i));
        // IsSecure: strconv.ParseBool(u.Query().Get("isSecure")), false when absent or invalid.
        let query = tail.split_once('?').map_or("", |(_, q)| q);
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let is_secure = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("isSecure="))
            .is_some_and(|v| matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True"));
        if s.eq_ignore_ascii_case(scheme) && legacy_secure.is_none_or(|want| want == is_secure) {
            return authority.to_string();
        }
    }
    String::new()
}

/// The real registrations satisfy the readers' types: this is what makes the checks below on
/// switchboard's own values mean something.
#[test]
fn real_registrations_fit_the_go_reader_types() {
    for (what, r) in records() {
        let go = match r.expect.format.as_str() {
            "plain" => continue,
            "kratos" => KRATOS_SERVICE_INSTANCE,
            "go-micro" => MICRO_SERVICE,
            "etcd-naming" => ETCD_NAMING_UPDATE,
            other => panic!("{what}: unknown format {other}"),
        };
        let value: Value = serde_json::from_str(&r.value).expect(&what);
        unmarshal_ok(&value, go, "$").unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            !r.value.contains(": ") && !r.value.contains(", ") && !r.value.ends_with('\n'),
            "{what}: json.Marshal writes compact JSON"
        );
    }
    // The endpoint parser above agrees with what kratos wrote and the codec decoded.
    for (what, r) in records() {
        if r.expect.format != "kratos" || r.expect.error.is_some() {
            continue;
        }
        let obj = object(&r.value, &what);
        let endpoints = obj["endpoints"].as_array().expect(&what);
        let want = &r.expect.instances[0].addr;
        let secure = r.expect.instances[0]
            .metadata
            .get("secure")
            .map(String::as_str);
        let got = match secure {
            Some("true") if r.value.contains("isSecure=true") => {
                kratos_parse_endpoint(endpoints, "grpc", Some(true))
            }
            Some("true") => kratos_parse_endpoint(endpoints, "grpcs", None),
            _ => kratos_parse_endpoint(endpoints, "grpc", None),
        };
        assert_eq!(&got, want, "{what}");
    }
}

/// What switchboard's registrar would write for one instance, in each format.
struct Written {
    name: &'static str,
    id: &'static str,
    addr: &'static str,
    metadata: BTreeMap<String, String>,
}

fn written() -> Vec<Written> {
    let metadata = BTreeMap::from([
        ("version".to_string(), "v1.2.0".to_string()),
        ("weight".to_string(), "3".to_string()),
        ("zone".to_string(), "eu-west-1a".to_string()),
    ]);
    vec![
        Written {
            name: "helloworld",
            id: "7587879329541637666",
            addr: "10.1.2.3:50051",
            metadata: metadata.clone(),
        },
        Written {
            name: "greeter",
            id: "greeter-1",
            addr: "[fd00::1:2]:9000",
            metadata: BTreeMap::new(),
        },
        Written {
            name: "user.rpc",
            id: "node-a",
            addr: "user-rpc-0.user-rpc.default.svc.cluster.local:8080",
            metadata,
        },
    ]
}

/// go-zero: zrpc/resolver/internal/discovbuilder.go dials each value of the subscribed prefix
/// as it is: `resolver.Address{Addr: val}`.
#[test]
fn go_zero_reads_what_switchboard_writes() {
    for w in written() {
        for format in [Format::Plain, Format::Auto] {
            let value = format.encode(w.name, w.id, w.addr, &w.metadata);
            assert_eq!(value, w.addr, "{format}");
        }
    }
}

/// kratos: contrib/registry/etcd/watcher.go unmarshals a ServiceInstance (one failing value
/// fails the whole listing), skips it unless `si.Name` is the watched name, and
/// transport/grpc/resolver/discovery/resolver.go dials
/// `endpoint.ParseEndpoint(in.Endpoints, endpoint.Scheme("grpc", !r.insecure))`.
#[test]
fn kratos_reads_what_switchboard_writes() {
    for w in written() {
        let value = Format::Kratos.encode(w.name, w.id, w.addr, &w.metadata);
        let obj = object(&value, "kratos");
        unmarshal_ok(&Value::Object(obj.clone()), KRATOS_SERVICE_INSTANCE, "$")
            .unwrap_or_else(|e| panic!("{e}\n  {value}"));
        assert_eq!(
            obj["name"], w.name,
            "watcher.go: si.Name != w.serviceName skips it"
        );
        assert_eq!(obj["id"], w.id);
        let endpoints = obj["endpoints"].as_array().expect("endpoints");
        // DialInsecure (v2.4 and later): scheme "grpc".
        assert_eq!(
            kratos_parse_endpoint(endpoints, "grpc", None),
            w.addr,
            "{value}"
        );
        // DialInsecure in v2.1 to v2.3: scheme "grpc" and IsSecure(u) == false.
        assert_eq!(
            kratos_parse_endpoint(endpoints, "grpc", Some(false)),
            w.addr,
            "{value}"
        );
        // kratos' weighted selectors read Metadata["weight"] (selector/default_node.go).
        if let Some(weight) = w.metadata.get("weight") {
            assert_eq!(obj["metadata"]["weight"], weight.as_str());
        }
        let back = Format::Auto
            .decode("/microservices/x/y", value.as_bytes())
            .expect(&value);
        assert_eq!(
            back,
            Format::Kratos
                .decode("/microservices/x/y", value.as_bytes())
                .unwrap()
        );
        assert_eq!(back[0].addr, w.addr);
    }
}

/// go-micro: registry/etcd/etcd.go decode()s a registry.Service; the cache and selectors group
/// it by `Name` and merge and remove nodes by `Id`, and client/grpc dials `node.Address`.
#[test]
fn go_micro_reads_what_switchboard_writes() {
    for w in written() {
        let value = Format::GoMicro.encode(w.name, w.id, w.addr, &w.metadata);
        let obj = object(&value, "go-micro");
        unmarshal_ok(&Value::Object(obj.clone()), MICRO_SERVICE, "$")
            .unwrap_or_else(|e| panic!("{e}\n  {value}"));
        assert_eq!(obj["name"], w.name);
        let nodes = obj["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 1, "registerNode writes one node per key");
        assert_eq!(nodes[0]["address"], w.addr);
        // nodePath(name, id) is the key; the registrar's key ends in the same id.
        assert_eq!(nodes[0]["id"], w.id);
        let key = format!("/micro/registry/{}/{}", w.name, w.id);
        let back = Format::Auto.decode(&key, value.as_bytes()).expect(&value);
        assert_eq!(
            back,
            Format::GoMicro.decode(&key, value.as_bytes()).unwrap()
        );
        assert_eq!(
            (back[0].key.as_str(), back[0].addr.as_str()),
            (key.as_str(), w.addr)
        );
    }
}

/// etcd naming: endpoints_impl.go (and the older GRPCResolver) unmarshal an internal.Update and
/// hand `Addr` (and `Metadata`) to grpc-go; a put is always an Add.
#[test]
fn etcd_naming_reads_what_switchboard_writes() {
    for w in written() {
        let value = Format::EtcdNaming.encode(w.name, w.id, w.addr, &w.metadata);
        let obj = object(&value, "etcd naming");
        unmarshal_ok(&Value::Object(obj.clone()), ETCD_NAMING_UPDATE, "$")
            .unwrap_or_else(|e| panic!("{e}\n  {value}"));
        assert_eq!(obj["Op"], 0, "Add");
        assert_eq!(obj["Addr"], w.addr);
        let key = format!("{}/{}", w.name, w.addr);
        let back: Vec<Instance> = Format::Auto.decode(&key, value.as_bytes()).expect(&value);
        assert_eq!(back[0].addr, w.addr);
    }
}

/// Metadata must not be a JSON object (or array): etcd's resolvers hand it to grpc-go as
/// `resolver.Address.Metadata`, where it is a Go map after `json.Unmarshal`, and grpc-go cannot
/// hash or compare those: up to v1.41 the round_robin base balancer keys a
/// `map[resolver.Address]` by the address (balancer/base/balancer.go: "hash of unhashable type
/// map[string]interface {}"), and from v1.66 clientconn.go equalAddressIgnoringBalAttributes
/// compares `a.Metadata == b.Metadata` ("comparing uncomparable type", etcd-io/etcd#19700,
/// grpc/grpc-go#8225). etcd's own manager writes `"Metadata":null` when there is none.
#[test]
fn etcd_naming_metadata_is_safe_for_grpc_go() {
    for w in written() {
        let value = Format::EtcdNaming.encode(w.name, w.id, w.addr, &w.metadata);
        let obj = object(&value, "etcd naming");
        let metadata = obj.get("Metadata").unwrap_or(&Value::Null);
        assert!(
            !metadata.is_object() && !metadata.is_array(),
            "`Metadata` is a Go map or slice after json.Unmarshal: {value}"
        );
    }
}
