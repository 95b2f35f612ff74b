//! Over TLS with client certificates, the resolver and the registrar work with the right
//! files, and fail clearly without them.

use std::time::Duration;

use anyhow::Result;
use switchboard_resolver::{EtcdConfig, EtcdResolver, EtcdTls, Registrar, Resolve};
use switchboard_testkit::{Etcd, TlsFiles};
use switchboard_tests::{Follower, PATIENCE, init_tracing};

#[tokio::test]
async fn mutual_tls() -> Result<()> {
    init_tracing();
    let dir = switchboard_testkit::temp_dir("tls")?;
    let files = TlsFiles::generate(dir.path())?;
    let etcd = Etcd::start_tls(files.clone()).await?;
    let mut writer = etcd.client().await?;
    writer.put("tls.rpc/a", "127.0.0.1:9600", None).await?;

    let tls = EtcdTls::from_files(
        Some(&files.ca),
        Some(&files.client_cert),
        Some(&files.client_key),
    )?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?.tls(tls);
    let registration = Registrar::new(config.clone(), "tls.rpc", "127.0.0.1:9601")?
        .register()
        .await?;
    let key = registration.status().key.unwrap_or_default();
    let follower = Follower::new(EtcdResolver::new(config, "tls.rpc").resolve());
    let mut expected = vec![
        ("tls.rpc/a".to_string(), "127.0.0.1:9600".to_string()),
        (key, "127.0.0.1:9601".to_string()),
    ];
    expected.sort();
    follower.wait_for_pairs(&expected, PATIENCE).await?;

    // Plain HTTP/2 to a TLS port, and TLS without the client certificate, both fail with an
    // error in the status; neither resolves anything.
    let quick = |c: EtcdConfig| {
        c.connect_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(1))
    };
    let plain = quick(EtcdConfig::from_hosts(&etcd.hosts())?);
    let no_cert = quick(
        EtcdConfig::from_hosts(&etcd.hosts())?.tls(EtcdTls::from_files(
            Some(&files.ca),
            None,
            None,
        )?),
    );
    for config in [plain, no_cert] {
        let denied = Follower::new(EtcdResolver::new(config, "tls.rpc").resolve());
        let status = denied
            .wait_status(PATIENCE, |s| s.last_error.is_some())
            .await?;
        assert!(!status.connected && denied.pairs().is_empty(), "{status:?}");
    }
    // A client certificate without its key is a configuration error.
    let err =
        EtcdTls::from_files(Some(&files.ca), Some(&files.client_cert), None).expect_err("no key");
    assert!(err.is_config());
    Ok(())
}
