use std::time::Duration;

use super::*;
use crate::ClientConfig;

fn parse(json: &str) -> Result<ServiceConfig, String> {
    ServiceConfig::parse(json).map_err(|e| e.to_string())
}

fn error(json: &str) -> String {
    parse(json).expect_err("invalid")
}

const RETRY: &str = r#"{"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 8]}"#;

#[test]
fn the_first_supported_load_balancing_config_wins() {
    let c = parse(
        r#"{"loadBalancingConfig": [{"xds_cluster_impl": {"x": 1}}, {"pick_first": {}}, {"round_robin": {}}]}"#,
    )
    .expect("valid");
    assert_eq!(c.load_balancing_policy, Some(Policy::PickFirst));
    let c = parse(r#"{"loadBalancingConfig": [{"weighted_round_robin": {}}]}"#).expect("valid");
    assert_eq!(c.load_balancing_policy, Some(Policy::WeightedRoundRobin));
    let c = parse(r#"{"loadBalancingPolicy": "round_robin"}"#).expect("valid");
    assert_eq!(c.load_balancing_policy, Some(Policy::RoundRobin));
    // loadBalancingConfig takes precedence over the deprecated field.
    let c =
        parse(r#"{"loadBalancingPolicy": "round_robin", "loadBalancingConfig": [{"p2c": {}}]}"#)
            .expect("valid");
    assert_eq!(c.load_balancing_policy, Some(Policy::P2c));
    assert_eq!(parse("{}").expect("valid"), ServiceConfig::default());
}

#[test]
fn bad_load_balancing_configs_are_named() {
    let e = error(r#"{"loadBalancingConfig": [{"grpclb": {}}]}"#);
    assert!(
        e.starts_with("ServiceConfig.loadBalancingConfig: names no supported policy"),
        "{e}"
    );
    let e = error(r#"{"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]}"#);
    assert!(
        e.starts_with("ServiceConfig.loadBalancingConfig[0]: "),
        "{e}"
    );
    let e = error(r#"{"loadBalancingConfig": {"round_robin": {}}}"#);
    assert!(
        e.starts_with("ServiceConfig.loadBalancingConfig: must be a JSON array"),
        "{e}"
    );
    let e = error(r#"{"loadBalancingPolicy": "fastest"}"#);
    assert!(e.starts_with("ServiceConfig.loadBalancingPolicy: "), "{e}");
    let e = error("{not json");
    assert!(e.starts_with("ServiceConfig: invalid JSON"), "{e}");
    let e = error("[]");
    assert!(e.starts_with("ServiceConfig: must be a JSON object"), "{e}");
}

#[test]
fn a_method_config_reads_all_its_fields() {
    let c = parse(&format!(
        r#"{{"methodConfig": [{{
            "name": [{{"service": "user.User", "method": "GetUserInfo"}}, {{"service": "user.User"}}, {{}}],
            "timeout": "1.5s", "waitForReady": true, "retryPolicy": {RETRY}
        }}],
        "retryThrottling": {{"maxTokens": 10, "tokenRatio": 0.1}},
        "healthCheckConfig": {{"serviceName": "user.User"}}}}"#
    ))
    .expect("valid");
    let m = &c.method_configs[0];
    assert_eq!(m.names.len(), 3);
    assert_eq!(m.names[0].service.as_deref(), Some("user.User"));
    assert_eq!(m.names[0].method.as_deref(), Some("GetUserInfo"));
    assert_eq!(m.names[1].method, None);
    assert_eq!(m.names[2], MethodName::default());
    assert_eq!(m.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(m.wait_for_ready, Some(true));
    let r = m.retry_policy.as_ref().expect("retry policy");
    assert_eq!(r.max_attempts, Some(4));
    assert_eq!(r.initial_backoff, Some(Duration::from_millis(100)));
    assert_eq!(r.max_backoff, Some(Duration::from_secs(1)));
    assert_eq!(r.backoff_multiplier, Some(2.0));
    assert_eq!(
        r.retryable_status_codes.as_deref(),
        Some(&["UNAVAILABLE".to_owned(), "8".to_owned()][..])
    );
    assert_eq!(
        c.retry_throttling,
        Some(ThrottlingSection {
            max_tokens: 10.0,
            token_ratio: 0.1
        })
    );
    assert_eq!(
        c.health_check_config.map(|h| h.service_name).as_deref(),
        Some("user.User")
    );
}

#[test]
fn more_than_five_attempts_count_as_five() {
    let c = parse(
        r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 9, "initialBackoff": "1s",
            "maxBackoff": "2s", "backoffMultiplier": 1.5, "retryableStatusCodes": ["ABORTED"]}}]}"#,
    )
    .expect("valid");
    let r = c.method_configs[0].retry_policy.as_ref().expect("retry");
    assert_eq!(r.max_attempts, Some(5));
}

#[test]
fn invalid_method_configs_name_the_field() {
    let cases = [
        (
            r#"{"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.maxAttempts: must be more than 1",
        ),
        (
            r#"{"maxAttempts": "4", "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.maxAttempts: must be a whole number",
        ),
        (
            r#"{"initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.maxAttempts: is required",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "100ms", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.initialBackoff: \"100ms\" is not a duration",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "0s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.maxBackoff: must be positive",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 0, "retryableStatusCodes": ["UNAVAILABLE"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.backoffMultiplier: must be more than 0",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": []}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.retryableStatusCodes: lists no status code",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "SOMETIMES"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.retryableStatusCodes[1]: \"SOMETIMES\" is not",
        ),
        (
            r#"{"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["OK"]}"#,
            "ServiceConfig.methodConfig[0].retryPolicy.retryableStatusCodes[0]: OK is not a failure",
        ),
    ];
    for (retry, expected) in cases {
        let e = error(&format!(
            r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {retry}}}]}}"#
        ));
        assert!(e.starts_with(expected), "{e} / {expected}");
    }
    for (method, expected) in [
        (
            r#"{"name": [{"method": "GetUserInfo"}]}"#,
            "ServiceConfig.methodConfig[0].name[0]: a method needs its service",
        ),
        (
            r#"{"name": [{}], "timeout": "-1s"}"#,
            "ServiceConfig.methodConfig[0].timeout: \"-1s\" is not a duration",
        ),
        (
            r#"{"name": [{}], "timeout": 1.5}"#,
            "ServiceConfig.methodConfig[0].timeout: must be a string",
        ),
        (
            r#"{"name": [{}], "timeout": "0s"}"#,
            "ServiceConfig.methodConfig[0].timeout: must be positive",
        ),
        (
            r#"{"name": [{}], "waitForReady": "yes"}"#,
            "ServiceConfig.methodConfig[0].waitForReady: must be true or false",
        ),
    ] {
        let e = error(&format!(r#"{{"methodConfig": [{method}]}}"#));
        assert!(e.starts_with(expected), "{e} / {expected}");
    }
    let e = error(r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}"#);
    assert!(
        e.starts_with("ServiceConfig.retryThrottling.maxTokens: "),
        "{e}"
    );
    let e = error(r#"{"retryThrottling": {"maxTokens": 10}}"#);
    assert!(
        e.starts_with("ServiceConfig.retryThrottling.tokenRatio: is required"),
        "{e}"
    );
    let e = error(r#"{"healthCheckConfig": {"serviceName": 3}}"#);
    assert!(
        e.starts_with("ServiceConfig.healthCheckConfig.serviceName: must be a string"),
        "{e}"
    );
}

#[test]
fn duplicate_names_are_an_error() {
    let e = error(
        r#"{"methodConfig": [
            {"name": [{"service": "user.User", "method": "Login"}]},
            {"name": [{"service": "user.User"}, {"service": "user.User", "method": "Login"}]}
        ]}"#,
    );
    assert_eq!(
        e,
        "ServiceConfig.methodConfig[1].name[1]: names the same methods as ServiceConfig.methodConfig[0].name[0]"
    );
    // `{}` and `{"service": ""}` both name the default.
    let e = error(r#"{"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}"#);
    assert!(
        e.starts_with("ServiceConfig.methodConfig[1].name[0]: "),
        "{e}"
    );
}

#[test]
fn proto_durations() {
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("0.100s"), Some(Duration::from_millis(100)));
    assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
    assert_eq!(parse_duration(".5s"), Some(Duration::from_millis(500)));
    assert_eq!(
        parse_duration("0.000000001s"),
        Some(Duration::from_nanos(1))
    );
    for bad in [
        "",
        "s",
        "1",
        "1.s",
        "1ms",
        "-1s",
        "1.0000000001s",
        "1e3s",
        "+1s",
        " 1s",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn lookup_prefers_the_method_then_the_service_then_the_default() {
    let c = parse(
        r#"{"methodConfig": [
            {"name": [{"service": "user.User", "method": "GetUserInfo"}], "timeout": "1s"},
            {"name": [{"service": "user.User"}], "timeout": "2s", "waitForReady": true},
            {"name": [{}], "timeout": "3s"}
        ]}"#,
    )
    .expect("valid");
    let table = MethodTable::build(&c, None)
        .expect("builds")
        .expect("a table");
    let timeout = |path: &str| table.lookup(path).and_then(|m| m.timeout);
    assert_eq!(
        timeout("/user.User/GetUserInfo"),
        Some(Duration::from_secs(1))
    );
    assert_eq!(timeout("/user.User/Login"), Some(Duration::from_secs(2)));
    assert_eq!(
        table
            .lookup("/user.User/Login")
            .and_then(|m| m.wait_for_ready),
        Some(true)
    );
    assert_eq!(timeout("/other.Other/Login"), Some(Duration::from_secs(3)));
    assert_eq!(
        timeout("/user.Users/GetUserInfo"),
        Some(Duration::from_secs(3))
    );

    let c = parse(r#"{"methodConfig": [{"name": [{"service": "user.User"}], "timeout": "2s"}]}"#)
        .expect("valid");
    let table = MethodTable::build(&c, None)
        .expect("builds")
        .expect("a table");
    assert!(table.lookup("/other.Other/Login").is_none());
    assert!(table.lookup("/user.User/Login").is_some());
    assert!(
        MethodTable::build(&parse("{}").expect("valid"), None)
            .expect("builds")
            .is_none()
    );
}

#[test]
fn method_retry_policies_share_the_clients_throttle() {
    let c = parse(&format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "a.A"}}], "retryPolicy": {RETRY}}},
            {{"name": [{{"service": "b.B"}}], "retryPolicy": {RETRY}}}]}}"#
    ))
    .expect("valid");
    let throttle = Arc::new(Throttle::new(10.0, 0.1));
    let table = MethodTable::build(&c, Some(&throttle))
        .expect("builds")
        .expect("a table");
    assert!(
        table
            .lookup("/a.A/X")
            .and_then(|m| m.retry.as_ref())
            .is_some()
    );
    // The table's two policies and this test hold the bucket.
    assert_eq!(Arc::strong_count(&throttle), 3);
}

#[test]
fn client_configs_carry_service_configs_in_yaml_toml_and_json() {
    let yaml = ClientConfig::from_yaml(
        r#"
Endpoints: [127.0.0.1:8080]
ServiceConfig: |
  {"loadBalancingConfig": [{"round_robin": {}}]}
"#,
    )
    .expect("valid");
    assert!(yaml.service_config.is_some());
    let toml = ClientConfig::from_toml(
        r#"
endpoints = ["127.0.0.1:8080"]
service_config = '''
{"methodConfig": [{"name": [{}], "timeout": "1s"}]}
'''
"#,
    )
    .expect("valid");
    assert!(toml.service_config.is_some());
    let e = ClientConfig::from_json(
        r#"{"Endpoints": ["127.0.0.1:8080"], "ServiceConfig": "{\"methodConfig\": [{\"name\": [{}], \"retryPolicy\": {\"maxAttempts\": 0}}]}"}"#,
    )
    .expect_err("invalid");
    assert!(e.is_config());
    assert!(
        e.to_string()
            .starts_with("ServiceConfig.methodConfig[0].retryPolicy.maxAttempts: "),
        "{e}"
    );
}

#[test]
fn hedging_policies_are_read_and_checked() {
    let c = parse(
        r#"{"methodConfig": [{"name": [{"service": "user.User"}], "hedgingPolicy":
            {"maxAttempts": 3, "hedgingDelay": "0.010s", "nonFatalStatusCodes": ["UNAVAILABLE", 8]}}]}"#,
    )
    .expect("valid");
    let hedging = c.method_configs[0].hedging_policy.clone().expect("hedging");
    assert_eq!(hedging.max_attempts, Some(3));
    assert_eq!(hedging.hedging_delay, Some(Duration::from_millis(10)));
    assert_eq!(
        hedging.non_fatal_status_codes,
        Some(vec!["UNAVAILABLE".into(), "8".into()])
    );
    let table = MethodTable::build(&c, None)
        .expect("builds")
        .expect("a table");
    let settings = table
        .lookup("/user.User/GetUserInfo")
        .expect("service-wide");
    let policy = settings.retry.as_ref().expect("a policy");
    assert_eq!(policy.hedging_delay(), Some(Duration::from_millis(10)));

    let method =
        |policies: &str| format!(r#"{{"methodConfig": [{{"name": [{{}}], {policies}}}]}}"#);
    assert_eq!(
        error(&method(&format!(
            r#""retryPolicy": {RETRY}, "hedgingPolicy": {{"maxAttempts": 2}}"#
        ))),
        "ServiceConfig.methodConfig[0]: has both retryPolicy and hedgingPolicy (one or the other)"
    );
    assert_eq!(
        error(&method(r#""hedgingPolicy": {"maxAttempts": 1}"#)),
        "ServiceConfig.methodConfig[0].hedgingPolicy.maxAttempts: must be more than 1"
    );
    assert_eq!(
        error(&method(
            r#""hedgingPolicy": {"maxAttempts": 2, "nonFatalStatusCodes": ["NOPE"]}"#
        )),
        "ServiceConfig.methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]: \"NOPE\" is not a gRPC status code (UNAVAILABLE, 14, …)"
    );
}

#[test]
fn message_size_limits_are_numbers_or_strings_of_bytes() {
    let c = parse(
        r#"{"methodConfig": [{"name": [{"service": "s"}],
            "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": "2048"}]}"#,
    )
    .expect("valid");
    let m = &c.method_configs[0];
    assert_eq!(m.max_request_message_bytes, Some(1024));
    assert_eq!(m.max_response_message_bytes, Some(2048));
    for (bad, says) in [
        (
            r#""maxRequestMessageBytes": 0"#,
            "methodConfig[0].maxRequestMessageBytes: must be a positive number of bytes, not 0",
        ),
        (
            r#""maxResponseMessageBytes": -1"#,
            "maxResponseMessageBytes: must be a positive number of bytes, not -1",
        ),
        (r#""maxResponseMessageBytes": "4MB""#, r#"not "4MB""#),
    ] {
        let e = error(&format!(
            r#"{{"methodConfig": [{{"name": [{{}}], {bad}}}]}}"#
        ));
        assert!(e.contains(says), "{bad}: {e}");
    }
}
