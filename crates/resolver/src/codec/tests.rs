use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn addrs(v: &[Instance]) -> Vec<(&str, &str)> {
    v.iter()
        .map(|i| (i.key.as_str(), i.addr.as_str()))
        .collect()
}

#[test]
fn plain_go_zero() {
    let got = Format::Auto
        .decode("user.rpc/7587869245623241230", b"10.0.0.1:8080")
        .unwrap();
    assert_eq!(
        addrs(&got),
        [("user.rpc/7587869245623241230", "10.0.0.1:8080")]
    );
    assert_eq!(got[0].weight, 1);
    assert!(
        Format::Plain
            .decode("k", br#"{"Addr":"10.0.0.1:80"}"#)
            .is_err()
    );
}

#[test]
fn etcd_naming_old_and_new() {
    let old = br#"{"Op":0,"Addr":"10.0.0.2:50051","Metadata":{"weight":5,"zone":"a"}}"#;
    let got = Format::Auto.decode("svc/10.0.0.2:50051", old).unwrap();
    assert_eq!(addrs(&got), [("svc/10.0.0.2:50051", "10.0.0.2:50051")]);
    assert_eq!(got[0].weight, 5);
    assert_eq!(got[0].metadata["zone"], "a");
    let new = br#"{"Addr":"10.0.0.2:50051","Metadata":null}"#;
    assert_eq!(
        Format::EtcdNaming.decode("k", new).unwrap()[0].addr,
        "10.0.0.2:50051"
    );
    let delete = br#"{"Op":1,"Addr":"10.0.0.2:50051"}"#;
    assert!(
        Format::Auto
            .decode("k", delete)
            .unwrap_err()
            .reason()
            .contains("Op")
    );
}

#[test]
fn kratos_picks_grpc_endpoints() {
    let v = br#"{"id":"abc","name":"helloworld","version":"v1.0","metadata":{"weight":"2"},
        "endpoints":["http://10.0.0.3:8000?isSecure=false","grpc://10.0.0.3:9000?isSecure=false"]}"#;
    let got = Format::Auto
        .decode("/microservices/helloworld/abc", v)
        .unwrap();
    assert_eq!(
        addrs(&got),
        [("/microservices/helloworld/abc", "10.0.0.3:9000")]
    );
    assert_eq!(got[0].weight, 2);
    assert_eq!(got[0].metadata["version"], "v1.0");
    assert_eq!(got[0].metadata["secure"], "false");
    let only_http = br#"{"id":"a","endpoints":["http://10.0.0.3:8000"]}"#;
    assert!(
        Format::Kratos
            .decode("k", only_http)
            .unwrap_err()
            .reason()
            .contains("grpc")
    );
    let two = br#"{"id":"a","endpoints":["grpc://10.0.0.3:1","grpcs://10.0.0.4:2"]}"#;
    let got = Format::Kratos.decode("k", two).unwrap();
    assert_eq!(
        addrs(&got),
        [
            ("k#10.0.0.3:1", "10.0.0.3:1"),
            ("k#10.0.0.4:2", "10.0.0.4:2")
        ]
    );
    assert_eq!(got[1].metadata["secure"], "true");
}

#[test]
fn go_micro_nodes() {
    let v = br#"{"name":"greeter","version":"latest","metadata":null,
        "nodes":[{"id":"greeter-1","address":"10.0.0.5:40000","metadata":{"protocol":"grpc"}}]}"#;
    let got = Format::Auto
        .decode("/micro/registry/greeter/greeter-1", v)
        .unwrap();
    assert_eq!(
        addrs(&got),
        [("/micro/registry/greeter/greeter-1", "10.0.0.5:40000")]
    );
    assert_eq!(got[0].metadata["protocol"], "grpc");
    assert_eq!(got[0].metadata["id"], "greeter-1");
    assert!(Format::GoMicro.decode("k", br#"{"nodes":[]}"#).is_err());
}

#[test]
fn garbage_is_an_error_naming_the_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{\"Addr\":", "invalid JSON"),
        (b"[1,2]", "port"),
        (b"{\"Addr\":12}", "not a string"),
        (b"{\"Addr\":\"nope\"}", "no port"),
        (b"{\"foo\":1}", "unknown shape"),
        (b"\xff\xfe", "UTF-8"),
        (b"10.0.0.1:0", "port 0"),
    ];
    for (value, reason) in cases {
        let err = Format::Auto.decode("k", value).unwrap_err();
        assert!(err.reason().contains(reason), "{value:?}: {err}");
    }
    let deep = "[".repeat(10_000);
    assert!(Format::EtcdNaming.decode("k", deep.as_bytes()).is_err());
    let huge = vec![b'a'; 1 << 20];
    let err = Format::Auto.decode("k", &huge).unwrap_err();
    assert!(
        err.reason().len() < 200,
        "error messages stay short: {}",
        err.reason().len()
    );
}

#[test]
fn format_names() {
    for f in [
        Format::Auto,
        Format::Plain,
        Format::EtcdNaming,
        Format::Kratos,
        Format::GoMicro,
    ] {
        assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
    }
    assert_eq!("go-zero".parse::<Format>().unwrap(), Format::Plain);
    assert!("xml".parse::<Format>().is_err());
}

proptest! {
    #[test]
    fn never_panics_on_bytes(value in proptest::collection::vec(any::<u8>(), 0..512)) {
        for f in [Format::Auto, Format::Plain, Format::EtcdNaming, Format::Kratos, Format::GoMicro] {
            let _ = f.decode("k", &value);
        }
    }

    #[test]
    fn never_panics_on_json_like(value in r#"\{("[A-Za-z]{0,8}":("[^"]{0,20}"|[0-9]{1,3}|null|\[[^\]]{0,30}\]|\{[^}]{0,30}\}),?){0,4}\}"#) {
        for f in [Format::Auto, Format::EtcdNaming, Format::Kratos, Format::GoMicro] {
            let _ = f.decode("k", value.as_bytes());
        }
    }

    #[test]
    fn encode_then_decode_round_trips(
        a in 1u8..=254, b in any::<u8>(), port in 1u16..,
        weight in 1u32..1000, id in "[a-z0-9-]{1,12}",
    ) {
        let addr = format!("10.{a}.{b}.1:{port}");
        let metadata = BTreeMap::from([("weight".to_string(), weight.to_string())]);
        for f in [Format::Plain, Format::EtcdNaming, Format::Kratos, Format::GoMicro] {
            let value = f.encode("svc", &id, &addr, &metadata);
            let got = Format::Auto.decode("svc/x", value.as_bytes()).unwrap();
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(&got[0].addr, &addr);
            prop_assert_eq!(&got[0].key, "svc/x");
            // Plain has no room for metadata; etcd naming writes `Metadata: null` (see encode).
            if f != Format::Plain && f != Format::EtcdNaming {
                prop_assert_eq!(got[0].weight, weight);
            }
        }
    }
}

#[test]
fn a_secure_registration_is_read_back_as_secure() {
    let metadata = BTreeMap::from([("secure".to_string(), "true".to_string())]);
    let kratos = Format::Kratos.encode("user", "a", "10.0.0.1:9000", &metadata);
    assert!(kratos.contains("\"grpcs://10.0.0.1:9000\""), "{kratos}");
    for value in [
        kratos,
        Format::GoMicro.encode("user", "a", "10.0.0.1:9000", &metadata),
    ] {
        let got = Format::Auto
            .decode("user/a", value.as_bytes())
            .expect("valid");
        assert_eq!(got[0].metadata["secure"], "true", "{value}");
    }
    let plain = Format::Kratos.encode("user", "a", "10.0.0.1:9000", &BTreeMap::new());
    assert!(plain.contains("\"grpc://10.0.0.1:9000\""), "{plain}");
}
