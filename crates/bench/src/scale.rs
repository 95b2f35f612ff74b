//! 10 000 instances: the first listing until every sub-channel is READY, a burst of PUT and
//! DELETE events until the balancer has applied the last one, and the client's RSS.
//!
//! The 10 000 keys are registered in etcd and point at 4 real servers on 127.0.0.1 (2 500 keys
//! each). The balancer keys sub-channels by instance key, so it opens 10 000 real HTTP/2
//! connections, as it would for 10 000 hosts; only the listening sockets are shared.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use etcd_client::{DeleteOptions, Txn, TxnOp};
use switchboard::ClientConfig;
use switchboard::balancer::ConnectivityState;

use crate::limits::Rss;
use crate::report::{Report, Verdict};
use crate::servers::Placement;

/// The etcd prefix of this scenario's instances.
const PREFIX: &str = "bench.big";

/// Instances registered.
const INSTANCES: usize = 10_000;

/// Operations per etcd transaction (etcd's default `--max-txn-ops`).
const TXN_OPS: usize = 128;

/// Concurrent writers of the burst.
const WRITERS: usize = 4;

/// How often the balancer's snapshot is read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The READY count may stop rising this long before the scenario goes on without the rest.
const STALL: Duration = Duration::from_secs(3);

/// How long any wait of this scenario may take.
const LIMIT: Duration = Duration::from_secs(30);

fn key(i: usize) -> String {
    format!("{PREFIX}/{i:05}")
}

/// Writes `ops` in transactions of [`TXN_OPS`], from [`WRITERS`] concurrent writers.
async fn write(kv: &etcd_client::Client, ops: Vec<TxnOp>) -> Result<()> {
    let chunks: Vec<Vec<TxnOp>> = ops.chunks(TXN_OPS).map(<[TxnOp]>::to_vec).collect();
    let mut per_writer: Vec<Vec<Vec<TxnOp>>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for (i, chunk) in chunks.into_iter().enumerate() {
        per_writer[i % WRITERS].push(chunk);
    }
    let mut tasks = Vec::new();
    for txns in per_writer {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for ops in txns {
                kv.txn(Txn::new().and_then(ops)).await?;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Listing, events per second and RSS with 10 000 instances.
pub(crate) async fn ten_thousand(
    place: &Placement,
    etcd: &switchboard_testkit::Etcd,
    report: &mut Report,
) -> Result<()> {
    let servers = place
        .spawn(&[
            ("big1", Duration::ZERO),
            ("big2", Duration::ZERO),
            ("big3", Duration::ZERO),
            ("big4", Duration::ZERO),
        ])
        .await?;
    let addrs = servers.addr_strings();
    let kv = etcd.client().await?;
    let puts = (0..INSTANCES)
        .map(|i| TxnOp::put(key(i), addrs[i % addrs.len()].as_str(), None))
        .collect();
    write(&kv, puts).await?;
    eprintln!("10 000 instances registered");
    let mut rss = Rss::open();
    let rss_before = rss.bytes();

    let started = Instant::now();
    let mut config = ClientConfig::etcd([etcd.endpoint(0)], PREFIX);
    config.dial_timeout = Some(LIMIT);
    // `connect` returns with the first READY instance: the time to it is measured.
    config.non_block = false;
    let client = switchboard::Client::connect(config).await?;
    let first_ready = started.elapsed();
    // Until every sub-channel is READY, or the READY count stops rising for STALL.
    let (mut listed, mut ready, mut ready_at) = (None, 0, Duration::ZERO);
    let mut stall_error = None;
    loop {
        let snapshot = client.balancer().snapshot();
        if listed.is_none() && snapshot.subchannels.len() >= INSTANCES {
            listed = Some(started.elapsed());
        }
        let now_ready = snapshot.ready();
        if now_ready > ready {
            ready = now_ready;
            ready_at = started.elapsed();
        }
        if ready >= INSTANCES {
            break;
        }
        if started.elapsed() > ready_at + STALL || started.elapsed() > LIMIT {
            stall_error = snapshot
                .subchannels
                .iter()
                .filter(|s| s.state != ConnectivityState::Ready)
                .find_map(|s| s.last_error.clone());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let rss_ready = rss.bytes();
    let t = Instant::now();
    let n = client.balancer().snapshot().subchannels.len();
    let snapshot_cost = t.elapsed();
    eprintln!("{ready} READY ({n} sub-channels)");

    // Two bursts. First one range DELETE of every instance: one etcd write, 10 000 DELETE
    // events, applied when the channel has no instance left and leaves READY (a state change
    // the balancer announces, so no polling). Then every instance PUT back in transactions of
    // 128 from 4 writers, followed by a marker PUT: events are applied in order, so the
    // marker's sub-channel appearing in the snapshot means all of them were.
    let mut state = client.balancer().watch_state();
    let started = Instant::now();
    let mut deleter = kv.clone();
    deleter
        .delete(
            key(0),
            Some(DeleteOptions::new().with_range(key(INSTANCES))),
        )
        .await?;
    let written = started.elapsed();
    tokio::time::timeout(LIMIT, state.wait_for(|s| *s != ConnectivityState::Ready)).await??;
    let deletes = Burst {
        events: INSTANCES,
        written,
        applied: started.elapsed(),
    };
    // Then the drains: every sub-channel closed and gone from the snapshot.
    while !client.balancer().snapshot().subchannels.is_empty() {
        if started.elapsed() > LIMIT {
            bail!("the removed sub-channels were not closed within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let closed = started.elapsed();
    let puts = (0..INSTANCES)
        .map(|i| TxnOp::put(key(i), addrs[i % addrs.len()].as_str(), None))
        .collect();
    let puts = burst(&client, kv.clone(), &addrs[0], write(&kv, puts)).await?;
    let rss_after = rss.bytes();
    drop(client);

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let scenario = "10 000 instances (4 servers, 10 000 connections)";
    report.row(
        scenario,
        "first listing → picker ready (every sub-channel READY)",
        format!(
            "{} to {ready} of {INSTANCES} READY (first READY after {}, all {INSTANCES} in the balancer after {})",
            ms(ready_at),
            ms(first_ready),
            listed.map_or_else(|| "—".into(), ms)
        ),
        "listing ≤ 1 s",
        Verdict::of(ready >= INSTANCES && ready_at <= Duration::from_secs(1)),
    );
    if let Some(e) = stall_error {
        report.note(format!(
            "10 000 instances: {} sub-channels never became READY; the last connection error \
             was \"{e}\"",
            INSTANCES - ready
        ));
    }
    for (what, b) in [
        (
            format!("DELETE of all {INSTANCES} (one range delete) → none left to pick"),
            deletes,
        ),
        (
            format!(
                "{INSTANCES} PUTs back (txns of 128, 4 writers) + a marker PUT → marker in the balancer"
            ),
            puts,
        ),
    ] {
        let rate = b.events as f64 / b.applied.as_secs_f64();
        let etcd_rate = b.events as f64 / b.written.as_secs_f64();
        report.row(
            scenario,
            format!("burst: {what}"),
            format!(
                "{rate:.0} events/s ({} until applied; etcd's writes returned after {}: {etcd_rate:.0} events/s)",
                ms(b.applied),
                ms(b.written)
            ),
            "≥ 50 000 events/s",
            Verdict::of(rate >= 50_000.0),
        );
    }
    report.row(
        scenario,
        format!("DELETE of all {INSTANCES} → every sub-channel drained and closed"),
        format!("{} after the DELETE", ms(closed)),
        "",
        Verdict::Info,
    );
    report.row(
        scenario,
        "client RSS: before connecting · all READY · after the burst",
        format!(
            "{} · {} · {} ({:.1} KiB per instance)",
            mib(rss_before),
            mib(rss_ready),
            mib(rss_after),
            (rss_ready.saturating_sub(rss_before)) as f64 / 1024.0 / INSTANCES as f64
        ),
        "",
        Verdict::Info,
    );
    report.note(format!(
        "10 000 instances: the client's open-file limit was {}; each sub-channel holds one \
         descriptor, its socket.",
        crate::limits::nofile()
    ));
    report.note(format!(
        "10 000 instances: the balancer's snapshot is read every {} ms to see when a state is \
         reached (one read of 10 000 sub-channels took {:.1} ms), so those times are late by up \
         to that much.",
        POLL.as_millis(),
        snapshot_cost.as_secs_f64() * 1e3
    ));
    Ok(())
}

/// How long a burst took: until etcd's writes returned, and until the balancer had the marker.
struct Burst {
    events: usize,
    written: Duration,
    applied: Duration,
}

/// Runs `writes` (`INSTANCES` events), then PUTs a marker, and waits until the balancer has it.
async fn burst(
    client: &switchboard::Client,
    mut kv: etcd_client::Client,
    addr: &str,
    writes: impl std::future::Future<Output = Result<()>>,
) -> Result<Burst> {
    let marker = format!("{PREFIX}/marker");
    let started = Instant::now();
    writes.await?;
    kv.put(marker.as_str(), addr, None).await?;
    let written = started.elapsed();
    loop {
        if client
            .balancer()
            .snapshot()
            .subchannels
            .iter()
            .any(|s| s.key == marker)
        {
            return Ok(Burst {
                events: INSTANCES + 1,
                written,
                applied: started.elapsed(),
            });
        }
        if started.elapsed() > LIMIT {
            bail!("the burst was not applied within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
