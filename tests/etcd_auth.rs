//! With etcd authentication on, the resolver and the registrar work with the right credentials
//! and report a clear error with the wrong ones.

use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, ConnectOptions};
use switchboard_resolver::{EtcdConfig, EtcdResolver, Registrar, Resolve};
use switchboard_testkit::Etcd;
use switchboard_tests::{Follower, PATIENCE, init_tracing};

#[tokio::test]
async fn user_and_password() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut admin = etcd.client().await?;
    admin.user_add("root", "s3cret", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;
    let mut root = Client::connect(
        [etcd.endpoint(0)],
        Some(ConnectOptions::new().with_user("root", "s3cret")),
    )
    .await?;
    root.put("auth.rpc/static", "127.0.0.1:9500", None).await?;

    let config = EtcdConfig::from_hosts(&etcd.hosts())?.user("root", "s3cret");
    let registration = Registrar::new(config.clone(), "auth.rpc", "127.0.0.1:9501")?
        .register()
        .await?;
    let key = registration.status().key.unwrap_or_default();
    let follower = Follower::new(EtcdResolver::new(config, "auth.rpc").resolve());
    let mut expected = vec![
        ("auth.rpc/static".to_string(), "127.0.0.1:9500".to_string()),
        (key, "127.0.0.1:9501".to_string()),
    ];
    expected.sort();
    follower.wait_for_pairs(&expected, PATIENCE).await?;

    let wrong = EtcdConfig::from_hosts(&etcd.hosts())?.user("root", "wrong");
    let denied = Follower::new(EtcdResolver::new(wrong.clone(), "auth.rpc").resolve());
    let status = denied
        .wait_status(PATIENCE, |s| s.last_error.is_some())
        .await?;
    assert!(!status.connected);
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("authentication failed"), "{error}");
    let err = Registrar::new(wrong, "auth.rpc", "127.0.0.1:9502")?
        .register_timeout(Duration::from_secs(2))
        .register()
        .await
        .expect_err("wrong password");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    Ok(())
}
