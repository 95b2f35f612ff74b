//! A big fleet against a real etcd: 20 000 kratos-sized registrations (~500 bytes each, ~10 MB
//! under one prefix, well over gRPC's default 4 MiB message limit) are listed in pages and
//! followed, and a watch that resumes after an outage over more than 4 MiB of changes
//! converges without listing again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use switchboard_resolver::{EtcdConfig, EtcdResolver, Resolve, Update};
use switchboard_testkit::{Etcd, FaultProxy};
use switchboard_tests::{Follower, PATIENCE, init_tracing};

const PREFIX: &str = "/microservices/fleet/";
const INSTANCES: usize = 20_000;
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;

/// A kratos registration of about 500 bytes, as kratos' etcd registry writes it.
fn kratos(i: usize, round: usize) -> (String, String, String) {
    let id = format!("fleet-{i:05}-7d9c6b5f4-x2k9p");
    let addr = format!(
        "10.{}.{}.{}:{}",
        round % 250,
        i / 250,
        i % 250,
        9000 + round
    );
    let value = format!(
        concat!(
            r#"{{"id":"{id}","name":"fleet","version":"v1.{round}.0","#,
            r#""metadata":{{"app":"fleet","cluster":"prod-eu-west-1","commit":"3f9a2c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39","#,
            r#""region":"eu-west-1","zone":"eu-west-1b","weight":"10","owner":"team-platform@example.com","#,
            r#""build":"2026-12-01T10:00:00Z","runtime":"go1.22.4","pad":"{pad}"}},"#,
            r#""endpoints":["grpc://{addr}","http://{http}"]}}"#
        ),
        id = id,
        round = round,
        addr = addr,
        http = addr.replace(":9", ":8"),
        pad = "x".repeat(120),
    );
    (format!("{PREFIX}{id}"), value, addr)
}

/// Puts `entries` with 4 concurrent writers, in transactions of 128 puts.
async fn put_all(client: &Client, entries: Vec<(String, String)>) -> Result<()> {
    let mut tasks = Vec::new();
    let chunks: Vec<Vec<(String, String)>> = entries.chunks(TXN_OPS).map(<[_]>::to_vec).collect();
    let per = chunks.len().div_ceil(4);
    for part in chunks.chunks(per.max(1)) {
        let mut client = client.clone();
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            for chunk in part {
                let ops = chunk
                    .into_iter()
                    .map(|(k, v)| TxnOp::put(k, v, None))
                    .collect::<Vec<_>>();
                client.txn(Txn::new().and_then(ops)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Waits until the follower holds exactly `expected` (`key → addr`); a mismatch is summarised,
/// not printed whole.
async fn until_held(follower: &Follower, expected: &BTreeMap<String, String>) -> Result<Duration> {
    let started = Instant::now();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    loop {
        let held = follower.pairs();
        if held == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > PATIENCE * 2 {
            let wrong = held
                .iter()
                .filter(|p| !want.contains(p))
                .take(3)
                .collect::<Vec<_>>();
            bail!(
                "held {} instances, expected {}; e.g. unexpected {wrong:?}; status {:?}",
                held.len(),
                want.len(),
                follower.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_kratos_registrations_list_in_pages_and_a_resumed_watch_catches_up()
-> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let client = etcd.client().await?;
    let mut expected = BTreeMap::new();
    let mut entries = Vec::new();
    let mut bytes = 0;
    for i in 0..INSTANCES {
        let (key, value, addr) = kratos(i, 0);
        bytes += key.len() + value.len();
        expected.insert(key.clone(), addr);
        entries.push((key, value));
    }
    let written = Instant::now();
    put_all(&client, entries).await?;
    println!(
        "wrote {INSTANCES} kratos registrations, {:.1} MB, in {:?}",
        bytes as f64 / 1e6,
        written.elapsed()
    );
    assert!(bytes > 8 * 1024 * 1024, "{bytes} bytes is not a big fleet");

    // The listing is one snapshot: keys written while its pages are read (sorted after every
    // page, so that an unpinned read would see them) are not in it, and arrive through the watch.
    let late_writer = {
        let mut kv = client.clone();
        tokio::spawn(async move {
            for n in 0..5_000 {
                let (_, value, _) = kratos(n, 9);
                kv.put(format!("{PREFIX}zz-late-{n:05}"), value, None)
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let mut resolution =
        EtcdResolver::new(EtcdConfig::from_hosts(&etcd.hosts())?, PREFIX).resolve();
    let first = tokio::time::timeout(PATIENCE, resolution.next_update()).await?;
    late_writer.abort();
    let Some(Update::Reset(listed)) = first else {
        bail!("the first update is not a Reset: {first:?}");
    };
    let status = resolution.status();
    drop(resolution);
    let at = client
        .kv_client()
        .max_decoding_message_size(256 * 1024 * 1024)
        .get(
            PREFIX,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_revision(status.revision),
            ),
        )
        .await?;
    let at_revision: BTreeSet<String> = at
        .kvs()
        .iter()
        .map(|kv| Ok(kv.key_str()?.to_string()))
        .collect::<Result<_>>()?;
    let listed_keys: BTreeSet<String> = listed.iter().map(|i| i.key.clone()).collect();
    let late_after = client
        .kv_client()
        .max_decoding_message_size(256 * 1024 * 1024)
        .get(
            format!("{PREFIX}zz-late-"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count() as usize
        - at_revision
            .iter()
            .filter(|k| k.contains("zz-late-"))
            .count();
    println!(
        "listing in {} pages at revision {}: {} instances; {late_after} keys written during and after it",
        status.listing_pages,
        status.revision,
        listed.len()
    );
    assert_eq!(
        status.listing_pages,
        at_revision.len().div_ceil(1000) as u64,
        "{status:?}"
    );
    assert!(
        late_after > 0,
        "no key was written while the pages were read"
    );
    assert!(
        listed_keys == at_revision,
        "the listing is not the snapshot at its revision"
    );
    client
        .clone()
        .delete(
            format!("{PREFIX}zz-late-"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await?;

    // The resolver reaches etcd through a proxy, to cut it off later.
    let endpoint = etcd.endpoint(0);
    let proxy = FaultProxy::start(endpoint.parse()?).await?;
    let config = EtcdConfig::from_hosts(&proxy.addr().to_string())?;
    let started = Instant::now();
    let follower = Follower::new(EtcdResolver::new(config, PREFIX).resolve());
    let listed = until_held(&follower, &expected).await?;
    let status = follower.status();
    println!(
        "first listing of {INSTANCES} instances: {:?} (resolver start to all held: {:?}); status {status:?}",
        listed,
        started.elapsed()
    );
    assert_eq!(status.listings, 1);
    assert_eq!(status.listing_pages, 20);
    assert_eq!(status.skipped, 0);
    assert_eq!(status.instances, INSTANCES);

    // Cut off (silently, then every connection reset), while every instance moves and 1000
    // leave and 1000 join: ~10 MB of watch events to catch up on, in revisions of 128 puts.
    proxy.pause();
    proxy.reset();
    let revision = status.revision;
    let mut changes = Vec::new();
    let mut moved = 0;
    for i in 0..INSTANCES + 1000 {
        let (key, value, addr) = kratos(i, 1);
        if i < 1000 {
            expected.remove(&key);
            continue;
        }
        moved += value.len();
        expected.insert(key.clone(), addr);
        changes.push((key, value));
    }
    put_all(&client, changes).await?;
    let mut kv = client.clone();
    let mut deletes = Vec::new();
    for i in 0..1000 {
        deletes.push(TxnOp::delete(kratos(i, 1).0, None));
    }
    for chunk in deletes.chunks(TXN_OPS) {
        kv.txn(Txn::new().and_then(chunk.to_vec())).await?;
    }
    assert!(moved > 4 * 1024 * 1024, "only {moved} bytes of changes");
    proxy.resume();
    let resumed = Instant::now();
    let caught_up = until_held(&follower, &expected).await?;
    // The status follows the held set once the last batch is applied.
    let status = follower
        .wait_status(PATIENCE, |s| {
            s.instances == INSTANCES && s.revision > revision
        })
        .await?;
    println!(
        "after the outage: {:.1} MB of changes caught up {caught_up:?} after reconnecting ({:?} in all); status {status:?}",
        moved as f64 / 1e6,
        resumed.elapsed()
    );
    // A watch resumed from where it stopped: no second listing.
    assert_eq!(status.listings, 1, "{status:?}");
    assert!(status.revision > revision, "{status:?}");
    assert_eq!(status.instances, INSTANCES);
    Ok(())
}
