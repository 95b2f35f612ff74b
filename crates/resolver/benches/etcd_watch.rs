//! How fast the etcd resolver lists and follows a large service, against a real etcd.
//!
//! ```text
//! cargo bench -p switchboard-resolver --bench etcd_watch [-- --instances 10000 --events 50000]
//! cargo bench -p switchboard-resolver --bench etcd_watch -- --instances 20000 --value-bytes 500
//! ```
//!
//! `--value-bytes N` writes kratos registrations of about N bytes (JSON with metadata and two
//! endpoints) instead of plain `host:port` values: 20 000 of 500 bytes is a ~10 MB listing,
//! over gRPC's default 4 MiB message limit, which the resolver reads in pages.
//!
//! - **first listing**: `resolve()` → the `Reset` of every instance received and applied to an
//!   `InstanceSet` (median of 5 fresh resolvers);
//! - **live**: writers overwrite instances as fast as etcd takes them (transactions of 128
//!   puts) while a resolver follows; events applied per second from the first write to the
//!   last event applied, beside etcd's own write rate;
//! - **backlog**: the consumer pauses while the same number of events is written, then drains
//!   them: the resolver's own ceiling, from etcd's buffered watch stream to applied changes;
//! - the process's resident memory with the resolvers' instance sets held.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use etcd_client::{Client, Txn, TxnOp};
use switchboard_resolver::{EtcdConfig, EtcdResolver, InstanceSet, Resolution, Resolve, Update};
use switchboard_testkit::Etcd;

const TXN_OPS: usize = 128;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The value registered for instance `i` at `addr`: plain, or a kratos registration padded to
/// about `size` bytes.
fn value(i: usize, addr: &str, size: usize) -> String {
    if size == 0 {
        return addr.to_string();
    }
    let head = format!(
        r#"{{"id":"bench-{i:05}","name":"bench","version":"v1.0.0","metadata":{{"zone":"eu-west-1b","pad":""#
    );
    let tail = format!(r#""}},"endpoints":["grpc://{addr}"]}}"#);
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// Writes `count` puts over `instances` keys (round `round` picks the ports) with `writers`
/// concurrent writers, in transactions of 128 puts, of values of about `size` bytes (0: plain).
async fn write(
    client: &Client,
    instances: usize,
    count: usize,
    round: usize,
    writers: usize,
    size: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per = count.div_ceil(writers);
    for w in 0..writers {
        let mut client = client.clone();
        let range = (w * per)..((w + 1) * per).min(count);
        tasks.push(tokio::spawn(async move {
            let ops: Vec<usize> = range.collect();
            for chunk in ops.chunks(TXN_OPS) {
                let puts = chunk
                    .iter()
                    .map(|i| {
                        let key = format!("bench/{:05}", i % instances);
                        let port = 10000 + (i + round * 7919) % 50000;
                        let addr = format!("10.0.{}.{}:{port}", (i / 250) % 250, i % 250);
                        TxnOp::put(key, value(i % instances, &addr, size), None)
                    })
                    .collect::<Vec<_>>();
                client.txn(Txn::new().and_then(puts)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Applies updates until `changes` changes were applied.
async fn apply(resolution: &mut Resolution, set: &mut InstanceSet, changes: usize) -> Result<()> {
    let mut applied = 0;
    while applied < changes {
        match tokio::time::timeout(Duration::from_secs(60), resolution.next_update()).await {
            Ok(Some(update)) => applied += set.apply(update).len(),
            _ => bail!("resolver stalled after {applied} of {changes} changes"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let instances = arg("--instances", 10_000);
    let events = arg("--events", 50_000);
    let size = arg("--value-bytes", 0);
    let etcd = Etcd::start().await?;
    let client = etcd.client().await?;
    write(&client, instances, instances, 0, 4, size).await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?;
    let resolver = EtcdResolver::new(config, "bench");
    let rss_before = rss_mib();

    let mut listings = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut resolution = resolver.resolve();
        let mut set = InstanceSet::default();
        match resolution.next_update().await {
            Some(update @ Update::Reset(_)) => {
                set.apply(update);
            }
            other => bail!("expected a Reset first, got {other:?}"),
        }
        if set.len() != instances {
            bail!("listed {} of {instances} instances", set.len());
        }
        listings.push(started.elapsed());
    }
    listings.sort();

    // Live: follow while writing.
    let mut resolution = resolver.resolve();
    let mut set = InstanceSet::default();
    apply(&mut resolution, &mut set, instances).await?;
    let rss_held = rss_mib();
    let started = Instant::now();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write(&client, instances, events, 1, 4, size).await })
    };
    apply(&mut resolution, &mut set, events).await?;
    let live = started.elapsed();
    let write_time = writer.await??;

    // Backlog: the consumer pauses while the events are written, then drains them.
    write(&client, instances, events, 2, 4, size).await?;
    let started = Instant::now();
    apply(&mut resolution, &mut set, events).await?;
    let drain = started.elapsed();

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "etcd resolver, {instances} instances ({}), {events} events, etcd {} on 127.0.0.1\n",
        if size == 0 {
            "plain host:port values".to_string()
        } else {
            format!("kratos values of ~{size} bytes")
        },
        etcd.hosts()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| first listing of {instances} instances (median of 5) | {:.0} ms (min {:.0} ms, max {:.0} ms) |",
        listings[2].as_secs_f64() * 1e3,
        listings[0].as_secs_f64() * 1e3,
        listings[4].as_secs_f64() * 1e3
    );
    println!(
        "| live: events applied while etcd writes them | {:.0} events/s (etcd wrote {:.0} puts/s) |",
        rate(events, live),
        rate(events, write_time)
    );
    println!(
        "| backlog: buffered events drained by the resolver | {:.0} events/s |",
        rate(events, drain)
    );
    println!(
        "| process RSS with one resolver following {instances} instances | {:.1} MiB (before resolving: {:.1} MiB) |",
        rss_held, rss_before
    );
    Ok(())
}
