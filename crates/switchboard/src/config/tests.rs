use std::time::Duration;

use super::*;

#[test]
fn a_go_zero_client_config_reads_as_is() {
    let config = ClientConfig::from_yaml(
        "
Etcd:
  Hosts:
    - 127.0.0.1:2379
    - 127.0.0.1:22379
  Key: user.rpc
  User: root
  Pass: secret
App: gateway
Token: abc
NonBlock: true
Timeout: 3000
KeepaliveTime: 20s
Middlewares:
  Trace: true
",
    )
    .expect("valid");
    let etcd = config.etcd.clone().expect("etcd");
    assert_eq!(etcd.hosts, ["127.0.0.1:2379", "127.0.0.1:22379"]);
    assert_eq!(etcd.key, "user.rpc");
    assert_eq!(etcd.user.as_deref(), Some("root"));
    assert!(config.non_block);
    assert_eq!(config.timeout, Some(Duration::from_secs(3)));
    assert_eq!(config.keepalive_time, Some(Duration::from_secs(20)));
    assert_eq!(config.policy, Policy::RoundRobin);
    assert_eq!(config.service_name(), "user.rpc");
    // The password is kept, and never shown.
    assert_eq!(etcd.pass.as_deref(), Some("secret"));
    let shown = format!("{config:?} {config:#?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn toml_and_snake_case_json_read_the_same() {
    let toml = ClientConfig::from_toml(
        r#"
Endpoints = ["127.0.0.1:8080", "127.0.0.1:8081"]
Timeout = "500ms"
Policy = "p2c"
[Backoff]
Initial = "100ms"
Max = "10s"
"#,
    )
    .expect("valid");
    let json = ClientConfig::from_json(
        r#"{"endpoints": ["127.0.0.1:8080", "127.0.0.1:8081"], "timeout": 500, "policy": "p2c",
            "backoff": {"initial": 100, "max": "10s"}}"#,
    )
    .expect("valid");
    for config in [toml, json] {
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.timeout, Some(Duration::from_millis(500)));
        assert_eq!(config.policy, Policy::P2c);
        let backoff = config.backoff.expect("backoff");
        assert_eq!(backoff.initial, Some(Duration::from_millis(100)));
        assert_eq!(backoff.max, Some(Duration::from_secs(10)));
    }
}

#[test]
fn the_default_timeout_is_go_zero_s_and_zero_turns_it_off() {
    let config = ClientConfig::from_yaml("Target: direct:///127.0.0.1:1").expect("valid");
    assert_eq!(config.timeout, Some(Duration::from_secs(2)));
    let config =
        ClientConfig::from_yaml("Target: direct:///127.0.0.1:1\nTimeout: 0").expect("valid");
    assert_eq!(config.timeout, Some(Duration::ZERO));
}

fn error(yaml: &str) -> String {
    let e = ClientConfig::from_yaml(yaml).expect_err("invalid");
    assert!(e.is_config());
    e.to_string()
}

#[test]
fn invalid_configs_name_the_field_and_the_problem() {
    assert!(error("Endpoints: [a:1]\nTimeot: 5").contains("unknown field `Timeot`"));
    assert!(error("Endpoints: [a:1]\nPolicy: fastest").contains("round_robin"));
    assert!(error("Endpoints: [a:1]\nTimeout: 5 parsecs").contains("5 parsecs"));
    assert!(error("Timeout: 5").contains("exactly one of Etcd, Endpoints and Target"));
    assert!(
        error("Endpoints: [a:1]\nTarget: direct:///b:2")
            .contains("exactly one of Etcd, Endpoints and Target")
    );
    assert!(error("Etcd: {Hosts: [], Key: k}").contains("Etcd.Hosts"));
    assert!(error("Etcd: {Hosts: [h:1], Key: ' '}").contains("Etcd.Key"));
    assert!(error("Etcd: {Hosts: [h:1], Key: k, User: u}").contains("Etcd.User and Etcd.Pass"));
    assert!(error("Etcd: {Hosts: [h:1], Key: k, CertFile: c.pem}").contains("Etcd.CertFile"));
    assert!(
        error("Etcd: {Hosts: [h:1], Key: k, InsecureSkipVerify: true}")
            .contains("InsecureSkipVerify")
    );
    assert!(error("Etcd: {Hosts: [h:1], Key: k, Format: xml}").contains("xml"));
    assert!(
        error("Etcd: {Hosts: [h:1], Key: k, WatchCheckInterval: 10ms}")
            .contains("Etcd.WatchCheckInterval: 10ms is shorter than 100ms")
    );
    assert!(error("Target: dns:///svc:80").contains("Target"));
    assert!(
        error("Endpoints: [a:1]\nKeepaliveTime: 0s").contains("KeepaliveTime: must be positive")
    );
    assert!(error("Endpoints: [a:1]\nBackoff: {Jitter: 2}").contains("Backoff.Jitter"));
    assert!(error("Endpoints: [a:1]\nBackoff: {Multiplier: 0.5}").contains("Backoff.Multiplier"));
    assert!(error(": : :").contains("invalid YAML"));
}

#[test]
fn files_are_read_by_extension() {
    // Removed when dropped, whether the test passes or fails.
    let tmp = switchboard_testkit::temp_dir("config").expect("a temporary directory");
    let dir = tmp.path();
    let yaml = dir.join("c.yaml");
    std::fs::write(&yaml, "Endpoints: [127.0.0.1:1]").expect("write");
    assert_eq!(
        ClientConfig::from_file(&yaml).expect("valid").endpoints,
        ["127.0.0.1:1"]
    );
    let ini = dir.join("c.ini");
    std::fs::write(&ini, "x").expect("write");
    assert!(
        ClientConfig::from_file(&ini)
            .expect_err("ini")
            .to_string()
            .contains("unknown config format")
    );
    let missing = ClientConfig::from_file(dir.join("missing.yaml")).expect_err("missing");
    assert!(missing.to_string().contains("cannot read"));
}

#[test]
fn balancing_sections_read_and_bad_values_name_the_field() {
    let config = ClientConfig::from_yaml(
        "Endpoints: [127.0.0.1:1]\n\
         Policy: ring_hash\n\
         RingHash: {HashHeader: x-user-id, EntriesPerWeight: 200}\n\
         SubsetSize: 20\n\
         Locality: {Zone: eu-west-1a, MinHealthyPercent: 50}\n\
         PickFirst: {AttemptDelay: 100ms, KeepWarm: true}\n\
         LeastRequest: {ChoiceCount: 3}\n",
    )
    .expect("valid");
    assert_eq!(config.policy, switchboard_balancer::Policy::RingHash);
    assert_eq!(config.subset_size, Some(20));
    let ring = config.ring_hash.as_ref().expect("RingHash");
    assert_eq!(
        (ring.hash_header.as_deref(), ring.entries_per_weight),
        (Some("x-user-id"), Some(200))
    );
    let locality = config.locality.as_ref().expect("Locality");
    assert_eq!(
        (locality.zone.as_str(), locality.min_healthy_percent),
        ("eu-west-1a", Some(50))
    );
    let pick_first = config.pick_first.as_ref().expect("PickFirst");
    assert_eq!(
        (pick_first.attempt_delay, pick_first.keep_warm),
        (Some(std::time::Duration::from_millis(100)), true)
    );
    for (yaml, message) in [
        ("SubsetSize: 0", "SubsetSize: must be at least 1"),
        (
            "LeastRequest: {ChoiceCount: 11}",
            "LeastRequest.ChoiceCount: 11 is not between 2 and 10",
        ),
        ("Locality: {Zone: ' '}", "Locality.Zone: is empty"),
        (
            "RingHash: {HashHeader: 'x user'}",
            "RingHash.HashHeader: \"x user\" is not a metadata key",
        ),
        (
            "PickFirst: {AttemptDelay: 0}",
            "PickFirst.AttemptDelay: must be positive",
        ),
        ("Policy: maglev", "maglev"),
    ] {
        let e = error(&format!("Endpoints: [127.0.0.1:1]\n{yaml}\n"));
        assert!(e.contains(message), "{yaml}: {e}");
    }
}

#[test]
fn go_zeros_current_client_fields_read_as_go_zero_means_them() {
    // A gateway's RpcClientConf as today's go-zero documents it, every field set.
    let config = ClientConfig::from_yaml(
        "
Etcd:
  Hosts:
    - 127.0.0.1:2379
  Key: user.rpc
  ID: 3
  User: root
  Pass: secret
App: gateway
Token: 6jKNZbEpYGeUMAifz10gOnmoty3TV
NonBlock: true
Timeout: 2000
KeepaliveTime: 20s
BalancerName: p2c_ewma
Middlewares:
  Trace: true
  Duration: true
  Prometheus: true
  Breaker: true
  Timeout: false
",
    )
    .expect("valid");
    assert_eq!(config.etcd.as_ref().and_then(|e| e.id), Some(3));
    assert_eq!(config.policy, Policy::P2cPeakEwma);
    assert_eq!(config.app.as_deref(), Some("gateway"));
    assert_eq!(
        config.token.as_ref().map(Secret::expose),
        Some("6jKNZbEpYGeUMAifz10gOnmoty3TV")
    );
    assert_eq!(
        config.middlewares.as_ref().and_then(|m| m.timeout),
        Some(false)
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("6jKNZbEpYGeUMAifz10gOnmoty3TV") && !shown.contains("secret"));

    let with = |extra: &str| ClientConfig::from_yaml(&format!("Endpoints: [h:1]\n{extra}\n"));
    assert_eq!(
        with("BalancerName: consistent_hash").map(|c| c.policy).ok(),
        Some(Policy::RingHash)
    );
    assert_eq!(
        with("BalancerName: round_robin\nPolicy: round_robin")
            .map(|c| c.policy)
            .ok(),
        Some(Policy::RoundRobin)
    );
    for (extra, says) in [
        (
            "BalancerName: p2c_ewmaa",
            "BalancerName: \"p2c_ewmaa\" is not a balancer: p2c_ewma",
        ),
        ("BalancerName: p2c_ewma\nPolicy: pick_first", "disagree"),
        ("App: gateway", "App and Token: set both or neither"),
        ("App: gateway\nToken: \"\"", "Token: must be non-empty"),
        ("Middlewares: {Timeoutt: false}", "unknown field `Timeoutt`"),
    ] {
        let e = with(extra).expect_err(extra).to_string();
        assert!(e.contains(says), "{extra}: {e}");
    }
}

#[test]
fn a_go_zero_gateways_config_reads_unchanged_by_its_client_section() {
    // etc/gateway.yaml as goctl's api template writes it, with the RPC client goctl's docs add.
    let gateway = "Name: gateway-api
Host: 0.0.0.0
Port: 8888
Log:
  Mode: console
UserRpc:
  Etcd:
    Hosts:
    - 127.0.0.1:2379
    Key: user.rpc
  NonBlock: true
  Timeout: 3000
";
    let config = ClientConfig::from_yaml_section(gateway, "UserRpc").expect("valid");
    assert_eq!(
        config.etcd.as_ref().map(|e| e.key.as_str()),
        Some("user.rpc")
    );
    assert_eq!(config.timeout, Some(std::time::Duration::from_secs(3)));
    assert!(config.non_block);
    let missing = ClientConfig::from_yaml_section(gateway, "OrderRpc").expect_err("missing");
    assert!(
        missing.to_string().contains("no OrderRpc section"),
        "{missing}"
    );
    let typo =
        ClientConfig::from_yaml_section("UserRpc:\n  Endpoints: [h:1]\n  Timout: 1\n", "UserRpc")
            .expect_err("typo");
    assert!(
        typo.to_string().contains("UserRpc: ") && typo.to_string().contains("Timout"),
        "{typo}"
    );
}
