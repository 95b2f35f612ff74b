//! The resolver follows PUT/DELETE streams exactly: nothing lost between list and watch, nothing
//! lost across a compaction, on a single member and on a 3-member cluster.

use std::time::Duration;

use anyhow::Result;
use switchboard_resolver::{EtcdConfig, EtcdResolver, Resolve};
use switchboard_testkit::Etcd;
use switchboard_tests::{
    Follower, Lcg, PATIENCE, churn_step, converge, init_tracing, plain_entries, retry,
};
use tokio::sync::watch;

async fn put_delete_stream(etcd: &Etcd) -> Result<()> {
    let mut writer = etcd.client().await?;
    for (k, v) in plain_entries("svc", 10) {
        writer.put(k, v, None).await?;
    }
    let resolver = EtcdResolver::new(EtcdConfig::from_hosts(&etcd.hosts())?, "svc");
    let follower = Follower::new(resolver.resolve());
    converge(&follower, &mut writer, "svc/", PATIENCE).await?;
    assert_eq!(follower.pairs().len(), 10);

    let mut rng = Lcg(7);
    for _ in 0..300 {
        churn_step(&mut writer, "svc", &mut rng, 40).await?;
    }
    // Keys that merely share the prefix's first characters are another service.
    writer.put("svc2/x", "127.0.0.1:1", None).await?;
    writer.put("svc", "127.0.0.1:2", None).await?;
    converge(&follower, &mut writer, "svc/", PATIENCE).await?;
    assert!(follower.pairs().iter().all(|(k, _)| k.starts_with("svc/")));
    let status = follower.status();
    assert!(status.connected, "{status:?}");
    assert_eq!(
        status.listings, 1,
        "a healthy watch never re-lists: {status:?}"
    );
    assert_eq!(status.instances, follower.pairs().len());
    Ok(())
}

#[tokio::test]
async fn put_delete_stream_single_member() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    put_delete_stream(&etcd).await
}

#[tokio::test]
async fn put_delete_stream_three_members() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start_cluster(3).await?;
    put_delete_stream(&etcd).await
}

/// Resolvers started while a writer is busy miss nothing between their listing and their watch.
#[tokio::test]
async fn writer_racing_resolver_start_up() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let mut writer = etcd.client().await?;
    let (progress_tx, mut progress) = watch::channel(0usize);
    let writes = tokio::spawn(async move {
        for i in 0..400usize {
            writer
                .put(
                    format!("race/r{i:03}"),
                    format!("127.0.0.1:{}", 10000 + i),
                    None,
                )
                .await?;
            if i % 5 == 4 {
                writer.delete(format!("race/r{:03}", i - 2), None).await?;
            }
            progress_tx.send_replace(i + 1);
        }
        anyhow::Ok(())
    });
    let mut followers = Vec::new();
    for start_at in [0, 60, 150, 250, 380] {
        progress.wait_for(|n| *n >= start_at).await?;
        followers.push(Follower::new(
            EtcdResolver::new(config.clone(), "race").resolve(),
        ));
    }
    writes.await??;
    let mut reader = etcd.client().await?;
    for follower in &followers {
        converge(follower, &mut reader, "race/", PATIENCE).await?;
        assert_eq!(follower.pairs().len(), 400 - 80);
    }
    Ok(())
}

/// The resolver's member is frozen while the store changes and is compacted past the
/// resolver's revision; when the member dies, the resolver resumes elsewhere, finds its
/// revision compacted, re-lists, and converges.
#[tokio::test]
async fn compaction_while_the_watch_is_down() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start_cluster(3).await?;
    let mut writer = etcd.client().await?;
    for (k, v) in plain_entries("cmp", 20) {
        writer.put(k, v, None).await?;
    }
    // Slow hang detection: the watch stays down until the member is killed below.
    let config =
        EtcdConfig::from_hosts(&etcd.hosts())?.watch_check_interval(Duration::from_secs(60));
    let follower = Follower::new(EtcdResolver::new(config, "cmp").resolve());
    converge(&follower, &mut writer, "cmp/", PATIENCE).await?;
    let status = follower.wait_status(PATIENCE, |s| s.connected).await?;
    let watched = etcd
        .index_of(status.endpoint.as_deref().unwrap_or_default())
        .expect("the resolver names a member of the cluster");

    etcd.stop(watched)?;
    let mut writer = retry(PATIENCE, || etcd.client()).await?;
    let mut rng = Lcg(11);
    for _ in 0..50 {
        churn_step(&mut writer, "cmp", &mut rng, 30).await?;
    }
    for i in 0..5 {
        writer.delete(format!("cmp/{i:04}"), None).await?;
    }
    etcd.compact().await?;
    etcd.kill(watched);

    converge(&follower, &mut writer, "cmp/", PATIENCE).await?;
    let status = follower.status();
    assert!(
        status.listings >= 2,
        "the compaction forced a re-listing: {status:?}"
    );
    assert_ne!(
        status.endpoint.as_deref(),
        Some(etcd.endpoint(watched).as_str())
    );
    Ok(())
}
