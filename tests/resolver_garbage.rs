//! Registrations that do not decode are skipped and logged; the good ones stay, whatever the
//! bad ones look like and whenever they appear.

use anyhow::Result;
use switchboard_resolver::{EtcdConfig, EtcdResolver, Format, Resolve};
use switchboard_testkit::Etcd;
use switchboard_tests::{Follower, PATIENCE, init_tracing};

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect();
    v.sort();
    v
}

const KRATOS: &str = r#"{"id":"kratos-1","name":"mix","version":"v1","metadata":{"weight":"2"},
    "endpoints":["http://127.0.0.1:8003?isSecure=false","grpc://127.0.0.1:9003?isSecure=false"]}"#;
const MICRO: &str = r#"{"name":"mix","version":"latest","metadata":{},
    "nodes":[{"id":"micro-1","address":"127.0.0.1:9004","metadata":{"protocol":"grpc"}}]}"#;

#[tokio::test]
async fn garbage_is_skipped_and_good_registrations_stay() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let huge = "x".repeat(1 << 20);
    let huge_json = format!(r#"{{"Addr":"{}"}}"#, "9".repeat(1 << 20));
    let entries: Vec<(&str, &[u8])> = vec![
        ("mix/plain", b"127.0.0.1:9001"),
        (
            "mix/127.0.0.1:9002",
            br#"{"Op":0,"Addr":"127.0.0.1:9002","Metadata":{"weight":3}}"#,
        ),
        ("mix/kratos-1", KRATOS.as_bytes()),
        ("mix/micro-1", MICRO.as_bytes()),
        ("mix/bad-json", br#"{"Addr":"127.0.0.1:1""#),
        ("mix/bad-addr", b"not-an-address"),
        ("mix/empty", b""),
        ("mix/huge", huge.as_bytes()),
        ("mix/huge-json", huge_json.as_bytes()),
        ("mix/op-delete", br#"{"Op":1,"Addr":"127.0.0.1:9005"}"#),
        ("mix/binary", b"\xff\xfe\x00\x01"),
        (
            "mix/kratos-http-only",
            br#"{"id":"k","endpoints":["http://127.0.0.1:8000"]}"#,
        ),
        ("mix/unknown-json", br#"{"host":"127.0.0.1","port":9006}"#),
    ];
    for (k, v) in &entries {
        client.put(*k, *v, None).await?;
    }
    let good = pairs(&[
        ("mix/plain", "127.0.0.1:9001"),
        ("mix/127.0.0.1:9002", "127.0.0.1:9002"),
        ("mix/kratos-1", "127.0.0.1:9003"),
        ("mix/micro-1", "127.0.0.1:9004"),
    ]);

    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let follower = Follower::new(EtcdResolver::new(config.clone(), "mix").resolve());
    follower.wait_for_pairs(&good, PATIENCE).await?;
    let status = follower.status();
    assert_eq!(status.skipped, 9, "{status:?}");
    assert_eq!(status.instances, 4);

    // While watching: a good key turns bad (it goes), a bad key turns good (it comes), and
    // more garbage arrives (nothing else moves).
    client.put("mix/plain", "garbage", None).await?;
    client.put("mix/bad-addr", "127.0.0.1:9010", None).await?;
    client.put("mix/late-garbage", "{{{{", None).await?;
    client.put("mix/late-huge", huge.as_bytes(), None).await?;
    client.delete("mix/huge", None).await?;
    let good = pairs(&[
        ("mix/bad-addr", "127.0.0.1:9010"),
        ("mix/127.0.0.1:9002", "127.0.0.1:9002"),
        ("mix/kratos-1", "127.0.0.1:9003"),
        ("mix/micro-1", "127.0.0.1:9004"),
    ]);
    follower.wait_for_pairs(&good, PATIENCE).await?;
    let status = follower.wait_status(PATIENCE, |s| s.skipped >= 12).await?;
    assert!(status.connected && status.listings == 1, "{status:?}");

    // An explicit format decodes only its own kind.
    let plain_only = Follower::new(
        EtcdResolver::new(config, "mix")
            .format(Format::Plain)
            .resolve(),
    );
    plain_only
        .wait_for_pairs(&pairs(&[("mix/bad-addr", "127.0.0.1:9010")]), PATIENCE)
        .await?;
    Ok(())
}
