//! The registrar keeps a server's registration in etcd through revocations, deletions and
//! member failures, and removes it at once on a graceful shutdown.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use etcd_client::{Client, EventType, WatchOptions};
use switchboard_resolver::{
    EtcdConfig, EtcdResolver, Format, Registrar, RegistrarState, RegistrarStatus, Registration,
    Resolve,
};
use switchboard_testkit::{ClosedPort, Etcd};
use switchboard_tests::{Follower, PATIENCE, init_tracing, retry};

const TTL: Duration = Duration::from_secs(3);

async fn wait_registered(
    registration: &Registration,
    limit: Duration,
    f: impl Fn(&RegistrarStatus) -> bool,
) -> Result<RegistrarStatus> {
    let mut status = registration.status_watch();
    match tokio::time::timeout(
        limit,
        status.wait_for(|s| s.state == RegistrarState::Registered && f(s)),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s.clone()),
        _ => bail!(
            "not registered within {limit:?}: {:?}",
            registration.status()
        ),
    }
}

/// `(value, lease)` of `key`, if present.
async fn read(client: &mut Client, key: &str) -> Result<Option<(String, i64)>> {
    let resp = client.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())))
}

#[tokio::test]
async fn revoked_lease_is_re_registered_within_one_ttl() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let registration = Registrar::new(config, "user.rpc", "127.0.0.1:9100")?
        .ttl(TTL)?
        .register()
        .await?;
    let first = registration.status();
    let (key, lease) = (
        first.key.clone().unwrap_or_default(),
        first.lease.unwrap_or_default(),
    );
    assert_eq!(
        key,
        format!("user.rpc/{lease}"),
        "go-zero's key: prefix/leaseID"
    );
    let mut client = etcd.client().await?;
    assert_eq!(
        read(&mut client, &key).await?,
        Some(("127.0.0.1:9100".into(), lease))
    );

    let revoked_at = Instant::now();
    client.lease_revoke(lease).await?;
    let again = wait_registered(&registration, PATIENCE, |s| s.lease != Some(lease)).await?;
    let took = revoked_at.elapsed();
    assert!(
        took <= TTL,
        "re-registered {took:?} after the revocation, more than one TTL"
    );
    let (new_key, new_lease) = (
        again.key.unwrap_or_default(),
        again.lease.unwrap_or_default(),
    );
    assert_eq!(
        read(&mut client, &new_key).await?,
        Some(("127.0.0.1:9100".into(), new_lease))
    );
    assert_eq!(
        read(&mut client, &key).await?,
        None,
        "the old key went with its lease"
    );
    assert_eq!(again.grants, 2);
    println!("revoked lease: re-registered after {took:?}");
    Ok(())
}

#[tokio::test]
async fn deleted_key_is_put_back() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let registration = Registrar::new(config, "user.rpc", "127.0.0.1:9101")?
        .id("node-a")
        .register()
        .await?;
    let status = registration.status();
    let lease = status.lease.unwrap_or_default();
    assert_eq!(status.key.as_deref(), Some("user.rpc/node-a"));
    let mut client = etcd.client().await?;
    let deleted = client.delete("user.rpc/node-a", None).await?;
    let after = deleted.header().map_or(0, |h| h.revision()) + 1;
    let mut events = client
        .watch(
            "user.rpc/node-a",
            Some(WatchOptions::new().with_start_revision(after)),
        )
        .await?;
    let put_back = tokio::time::timeout(PATIENCE, async {
        while let Some(resp) = events.message().await? {
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Put)
            {
                return anyhow::Ok(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(put_back);
    assert_eq!(
        read(&mut client, "user.rpc/node-a").await?,
        Some(("127.0.0.1:9101".into(), lease))
    );
    Ok(())
}

#[tokio::test]
async fn killed_keepalive_member_does_not_lose_the_key() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start_cluster(3).await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(1));
    let registration = Registrar::new(config, "user.rpc", "127.0.0.1:9102")?
        .ttl(TTL)?
        .register()
        .await?;
    let status = registration.status();
    let (key, lease) = (
        status.key.clone().unwrap_or_default(),
        status.lease.unwrap_or_default(),
    );
    let member = etcd
        .index_of(status.endpoint.as_deref().unwrap_or_default())
        .expect("the registrar names a member");
    etcd.kill(member);
    let observer = (0..3).find(|i| *i != member).expect("three members");
    // Connecting may meet the election that follows the kill: retry it.
    let mut client = retry(PATIENCE, || etcd.client_of(observer)).await?;
    // For three TTLs, the key must be there at every look (retrying reads during an election).
    let killed = Instant::now();
    let until = killed + TTL * 3;
    let (mut reads, mut last_read) = (0, None);
    while Instant::now() < until {
        match read(&mut client, &key).await {
            Ok(found) => {
                assert_eq!(
                    found,
                    Some(("127.0.0.1:9102".into(), lease)),
                    "the key was lost"
                );
                reads += 1;
                last_read = Some(killed.elapsed());
            }
            Err(e) => println!("read failed during the election: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Seen, and seen later than one TTL after the kill: kept alive through another member.
    println!("{reads} reads found the key; the last {last_read:?} after the kill");
    assert!(reads >= 3, "only {reads} reads succeeded");
    assert!(
        last_read.is_some_and(|t| t > TTL * 2),
        "no read found the key two TTLs after the kill (last {last_read:?})"
    );
    let now = wait_registered(&registration, PATIENCE, |s| s.endpoint != status.endpoint).await?;
    assert_eq!(
        now.lease,
        Some(lease),
        "the same lease was kept alive from another member"
    );
    Ok(())
}

#[tokio::test]
async fn graceful_deregister_removes_the_key_at_once() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let follower = Follower::new(EtcdResolver::new(config.clone(), "user.rpc").resolve());
    let registration = Registrar::new(config, "user.rpc", "127.0.0.1:9103")?
        .register()
        .await?;
    let key = registration.status().key.unwrap_or_default();
    follower
        .wait_for_pairs(&[(key.clone(), "127.0.0.1:9103".into())], PATIENCE)
        .await?;
    registration.deregister().await?;
    let mut client = etcd.client().await?;
    assert_eq!(
        read(&mut client, &key).await?,
        None,
        "gone as soon as deregister returns"
    );
    follower.wait_for_pairs(&[], PATIENCE).await?;
    Ok(())
}

/// Each format the registrar writes is what the matching Go clients read, and switchboard's
/// own resolver reads them all.
#[tokio::test]
async fn every_format_is_resolved() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let mut registrations = Vec::new();
    let formats = [
        Format::Plain,
        Format::EtcdNaming,
        Format::Kratos,
        Format::GoMicro,
    ];
    for (i, format) in formats.into_iter().enumerate() {
        let addr = format!("127.0.0.1:{}", 9200 + i);
        let r = Registrar::new(config.clone(), "multi", &addr)?
            .format(format)
            .metadata("weight", "4")
            .register()
            .await?;
        registrations.push((r.status().key.unwrap_or_default(), addr, r));
    }
    let mut client = etcd.client().await?;
    let (naming_key, naming_addr, _) = &registrations[1];
    assert_eq!(
        naming_key,
        &format!("multi/{naming_addr}"),
        "grpc-go's key: target/addr"
    );
    let (raw, _) = read(&mut client, naming_key).await?.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&raw)?;
    assert_eq!(json["Op"], 0);
    assert_eq!(json["Addr"], naming_addr.as_str());

    let follower = Follower::new(EtcdResolver::new(config, "multi").resolve());
    let mut expected: Vec<(String, String)> = registrations
        .iter()
        .map(|(k, a, _)| (k.clone(), a.clone()))
        .collect();
    expected.sort();
    follower.wait_for_pairs(&expected, PATIENCE).await?;
    Ok(())
}

/// A server that starts while etcd is down registers as soon as etcd is back.
#[tokio::test]
async fn lazy_registration_waits_for_etcd() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    etcd.kill_all();
    let config = EtcdConfig::from_hosts(&etcd.hosts())?.connect_timeout(Duration::from_millis(500));
    let registration = Registrar::new(config, "late", "127.0.0.1:9300")?.register_lazy();
    let mut status = registration.status_watch();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.last_error.is_some())).await??;
    assert_ne!(registration.status().state, RegistrarState::Registered);
    etcd.restart_all().await?;
    let status = wait_registered(&registration, PATIENCE, |_| true).await?;
    let mut client = etcd.client().await?;
    let key = status.key.unwrap_or_default();
    assert_eq!(
        read(&mut client, &key).await?.map(|(v, _)| v),
        Some("127.0.0.1:9300".into())
    );
    Ok(())
}

#[tokio::test]
async fn register_fails_clearly_when_etcd_is_unreachable() -> Result<()> {
    init_tracing();
    let closed = ClosedPort::new()?;
    let config = EtcdConfig::new([closed.addr().to_string()])?;
    let started = Instant::now();
    let err = Registrar::new(config, "nowhere", "127.0.0.1:9400")?
        .register_timeout(Duration::from_secs(2))
        .register()
        .await
        .expect_err("no etcd there");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = err.to_string();
    assert!(
        message.contains("could not register") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(
        Registrar::new(EtcdConfig::new(["127.0.0.1:1"])?, "x", "no-port")
            .unwrap_err()
            .is_config()
    );
    assert!(
        Registrar::new(EtcdConfig::new(["127.0.0.1:1"])?, "x", "127.0.0.1:1")?
            .ttl(Duration::from_secs(1))
            .unwrap_err()
            .is_config()
    );
    Ok(())
}
