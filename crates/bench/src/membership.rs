//! How fast a switchboard client follows etcd: a PUT of a new instance until the first RPC it
//! serves, and a DELETE until the last RPC that was sent to it.
//!
//! A client (the facade, etcd resolver, round-robin, default settings) serves two registered
//! instances under light load (4 callers). Each trial PUTs a new key for a third server and
//! DELETEs it again. Times start just before the PUT or DELETE request is sent to etcd, so they
//! include etcd's commit and the watch notification. "First served" is when the first reply
//! from the new instance reached a caller; "last pick" is when the last RPC that the removed
//! instance answered was started (the pick follows within microseconds).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard::ClientConfig;
use switchboard_testkit::Etcd;

use crate::Settings;
use crate::background::Background;
use crate::load::Caller;
use crate::report::{Report, Verdict, quantile};
use crate::servers::Placement;

/// The etcd prefix of this scenario's instances.
const PREFIX: &str = "bench.members";

/// Callers sending RPCs during the trials.
const CONCURRENCY: usize = 4;

/// How long a trial waits for the new instance's first reply.
const APPEAR_LIMIT: Duration = Duration::from_secs(5);

/// How long the new instance serves before its DELETE.
const SERVE_FOR: Duration = Duration::from_millis(20);

/// How long after a DELETE picks are still watched for.
const SETTLE: Duration = Duration::from_millis(150);

/// PUT → first served RPC, and DELETE → last pick, over `settings.trials` trials.
pub(crate) async fn put_and_delete(
    place: &Placement,
    settings: &Settings,
    etcd: &Etcd,
    report: &mut Report,
) -> Result<()> {
    let servers = place
        .spawn(&[
            ("base1", Duration::ZERO),
            ("base2", Duration::ZERO),
            ("new", Duration::ZERO),
        ])
        .await?;
    let mut kv = etcd.client().await?;
    for name in ["base1", "base2"] {
        kv.put(
            format!("{PREFIX}/{name}"),
            servers.addr_of(name)?.to_string(),
            None,
        )
        .await?;
    }
    let new_addr = servers.addr_of("new")?.to_string();
    let caller =
        Caller::switchboard_with(ClientConfig::etcd([etcd.endpoint(0)], PREFIX), 2).await?;
    let Some(client) = caller.client() else {
        bail!("not a switchboard client");
    };
    let load = Background::start(&caller, CONCURRENCY, "new");
    let marks = load.marks();
    let (mut appear, mut vanish) = (Vec::new(), Vec::new());
    let (mut put_rtt, mut delete_rtt) = (Vec::new(), Vec::new());
    let (mut appear_applied, mut vanish_applied) = (Vec::new(), Vec::new());
    eprintln!("PUT / DELETE, {} trials", settings.trials);
    for trial in 0..settings.trials {
        let key = format!("{PREFIX}/new-{trial}");
        marks.first_watched_end.store(u64::MAX, Ordering::Relaxed);
        marks.last_watched_start.store(0, Ordering::Relaxed);
        let put_at = load.now();
        kv.put(key.as_str(), new_addr.as_str(), None).await?;
        let put_done = load.now();
        put_rtt.push(put_done.saturating_sub(put_at) as f64 / 1e3);
        let deadline = Instant::now() + APPEAR_LIMIT;
        while marks.first_watched_end.load(Ordering::Relaxed) == u64::MAX {
            if Instant::now() > deadline {
                bail!("trial {trial}: the new instance served nothing within {APPEAR_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = marks.first_watched_end.load(Ordering::Relaxed);
        appear.push(first.saturating_sub(put_at) as f64 / 1e3);
        appear_applied.push(first.saturating_sub(put_done) as f64 / 1e3);
        tokio::time::sleep(SERVE_FOR).await;
        let delete_at = load.now();
        kv.delete(key.as_str(), None).await?;
        let delete_done = load.now();
        delete_rtt.push(delete_done.saturating_sub(delete_at) as f64 / 1e3);
        tokio::time::sleep(SETTLE).await;
        let last = marks.last_watched_start.load(Ordering::Relaxed);
        vanish.push(last.saturating_sub(delete_at) as f64 / 1e3);
        vanish_applied.push(last.saturating_sub(delete_done) as f64 / 1e3);
        // The next trial starts once the removed sub-channel has drained and closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while client
            .balancer()
            .snapshot()
            .subchannels
            .iter()
            .any(|s| s.key.ends_with(&format!("/new-{trial}")))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let failed = marks.errors.load(Ordering::Relaxed);
    let served = marks.ok.load(Ordering::Relaxed);
    let elapsed = load.now();
    load.stop().await?;
    let line = |v: &[f64]| {
        format!(
            "p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
            quantile(v, 0.5) / 1e3,
            quantile(v, 0.99) / 1e3,
            quantile(v, 1.0) / 1e3
        )
    };
    let scenario = format!(
        "membership, {} trials, {CONCURRENCY} callers",
        settings.trials
    );
    report.row(
        &scenario,
        "PUT request sent → the new instance's first served RPC",
        line(&appear),
        "p99 ≤ 10 ms",
        Verdict::of(quantile(&appear, 0.99) <= 10_000.0),
    );
    report.row(
        &scenario,
        "PUT applied (etcd's response) → first served RPC (0 if before)",
        line(&appear_applied),
        "",
        Verdict::Info,
    );
    report.row(
        &scenario,
        "DELETE request sent → last RPC sent to that instance (0 if before)",
        line(&vanish),
        "",
        Verdict::Info,
    );
    report.row(
        &scenario,
        "DELETE applied (etcd's response) → last RPC sent to that instance (0 if before)",
        line(&vanish_applied),
        "p99 ≤ 5 ms",
        Verdict::of(quantile(&vanish_applied, 0.99) <= 5_000.0),
    );
    report.row(
        &scenario,
        "etcd alone: PUT request → response · DELETE request → response",
        format!("{} · {}", line(&put_rtt), line(&delete_rtt)),
        "",
        Verdict::Info,
    );
    report.row(
        &scenario,
        "RPCs during the trials",
        format!(
            "{served} served, {failed} failed, in {:.1} s",
            elapsed as f64 / 1e9
        ),
        "",
        Verdict::Info,
    );
    Ok(())
}
