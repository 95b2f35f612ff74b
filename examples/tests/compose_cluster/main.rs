//! The docker-compose cluster, run: the examples image built, the cluster up (three etcd members,
//! three user-rpc instances, the gateway), and under load from this host, five faults, each
//! counted by the HTTP status of every request the load made (goal: none failed):
//!
//! - a: `stop user-rpc-2`, then `start`;
//! - b: `kill -s SIGKILL user-rpc-3`, then `start`;
//! - c: the gateway cut off from etcd's network while one instance leaves and another comes
//!   back: it serves from the last set it saw, and matches etcd within 3 s of reconnecting;
//! - d: an instance cut off silently from the gateway's network (its etcd lease kept alive on
//!   the other): it leaves the picker within the gateway's keepalives (2 s + 2 s);
//! - e: an etcd member stopped and started again, an instance stopped and started meanwhile.
//!
//! Ignored by default (it builds an image: about 11 min on 2 cores from nothing, seconds from
//! Docker's cache). `scripts/test.sh` runs it alone:
//!
//! ```text
//! cargo nextest run -p switchboard-examples --test compose_cluster --run-ignored only --no-capture
//! ```
//!
//! Where no Docker engine answers, or no compose tool is installed, it says so and passes. The
//! cluster is a project of its own (`switchboard-test-PID`), on a free port of 127.0.0.1, and is
//! taken down (`down -v --remove-orphans`) however the test ends.

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod load;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use cluster::{Cluster, compose_tool, free_port, image_variables, succeeds};
use load::{Counts, call, secs, under_load};

/// The gateway's keepalives, as examples/compose/gateway.yaml sets them.
const KEEPALIVE: Duration = Duration::from_secs(2 + 2);
/// How long after reconnecting to etcd the gateway's view must match etcd's.
const RECONNECTED: Duration = Duration::from_secs(3);
/// How long the gateway is cut off from etcd: longer than the 2 s in which it finds its watch
/// silent (gateway.yaml's `WatchCheckInterval: 1s`), shorter than the 10 s it would take with the
/// default check.
const PARTITION: Duration = Duration::from_secs(6);

#[tokio::test]
#[ignore = "builds the examples image and runs the docker-compose cluster: minutes; scripts/test.sh runs it"]
async fn the_cluster_serves_through_instance_gateway_and_etcd_faults() -> Result<()> {
    if !succeeds("docker", &["info"]).await {
        println!("compose_cluster: SKIPPED: no Docker engine answers (`docker info` failed)");
        return Ok(());
    }
    let Some(tool) = compose_tool().await else {
        println!(
            "compose_cluster: SKIPPED: neither `docker compose` nor `docker-compose` is installed"
        );
        return Ok(());
    };
    let mut env = image_variables().await?;
    let port = free_port()?;
    env.push(("GATEWAY_PORT".into(), port.to_string()));
    let mut cluster = Cluster {
        tool,
        project: format!("switchboard-test-{}", std::process::id()),
        env,
        port,
        passed: false,
    };
    println!(
        "compose_cluster: {} (project {}), gateway on {}, images {:?}",
        cluster.tool.join(" "),
        cluster.project,
        cluster.gateway(),
        cluster.env
    );
    let minute = Duration::from_secs(60);

    let start = Instant::now();
    cluster
        .compose(&["build", "user-rpc-1"], 45 * minute)
        .await?;
    let build = start.elapsed();
    println!("compose_cluster: image built in {}", secs(build));

    let start = Instant::now();
    cluster.compose(&["up", "-d"], 10 * minute).await?;
    let up = start.elapsed();
    let first = loop {
        if let Ok(answer) = support::get(&cluster.gateway(), "/api/user/1").await
            && answer.status == 200
        {
            break start.elapsed();
        }
        ensure!(
            start.elapsed() < 5 * minute,
            "no 200 from /api/user/1 within 5 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "compose_cluster: `up -d` returned after {}, first 200 after {}",
        secs(up),
        secs(first)
    );
    let all: BTreeSet<String> = (1..=3).map(|i| format!("user-rpc-{i}-data:8080")).collect();
    cluster.until_view(&all, 2 * minute).await?;
    let mut spread = Counts::default();
    for n in 0..60 {
        call(&cluster.gateway(), n, &mut spread).await;
    }
    println!(
        "compose_cluster: 60 requests answered by {:?}",
        spread.instances
    );
    for i in 1..=3 {
        ensure!(
            spread.instances.contains_key(&format!("user-rpc-{i}")),
            "user-rpc-{i} answered none of 60 requests: {spread:?}"
        );
    }
    let mut faults = Vec::new();

    // a: a graceful stop and start.
    faults.push(
        under_load(&cluster, "a (stop, start user-rpc-2)", async {
            cluster.compose(&["stop", "user-rpc-2"], minute).await?;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-2"], minute).await?;
            cluster.until_view(&all, minute).await?;
            let back = start.elapsed();
            Ok(vec![format!(
                "back in the picker {} after `start`",
                secs(back)
            )])
        })
        .await?,
    );

    // b: a kill, no deregistration: the default retries absorb the calls it cut.
    faults.push(
        under_load(&cluster, "b (SIGKILL, start user-rpc-3)", async {
            cluster
                .compose(&["kill", "-s", "SIGKILL", "user-rpc-3"], minute)
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-3"], minute).await?;
            cluster.until_view(&all, 2 * minute).await?;
            let back = start.elapsed();
            Ok(vec![format!(
                "back in the picker {} after `start`",
                secs(back)
            )])
        })
        .await?,
    );

    // c: the gateway cut off from etcd while user-rpc-1 leaves and user-rpc-3 comes back.
    let gateway = cluster.container("gateway").await?;
    let control = cluster.network("control");
    faults.push(
        under_load(&cluster, "c (gateway cut off from etcd)", async {
            cluster.compose(&["stop", "user-rpc-3"], minute).await?;
            let two: BTreeSet<String> = ["user-rpc-1-data:8080", "user-rpc-2-data:8080"]
                .map(str::to_owned)
                .into();
            cluster.until_view(&two, minute).await?;
            cluster
                .docker(&["network", "disconnect", &control, &gateway], minute)
                .await?;
            let cut = Instant::now();
            cluster.compose(&["stop", "user-rpc-1"], minute).await?;
            cluster.compose(&["start", "user-rpc-3"], minute).await?;
            // A partition long enough for the gateway to find its etcd watch silent (within
            // 2 s) and to be trying the members again.
            tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
            // Still the last set it saw: user-rpc-3's return is news it cannot have.
            let (known, picked) = cluster.view().await?;
            ensure!(
                known == two,
                "cut off from etcd, the gateway knows {known:?}, not the last set {two:?}"
            );
            ensure!(
                picked.contains("user-rpc-2-data:8080"),
                "cut off from etcd, the gateway picks {picked:?}"
            );
            let registered = cluster.registered("etcd-3").await?;
            cluster
                .docker(&["network", "connect", &control, &gateway], minute)
                .await?;
            let converged = cluster.until_view(&registered, minute).await?;
            ensure!(
                converged <= RECONNECTED,
                "the gateway matched etcd {} after reconnecting, not within {RECONNECTED:?}",
                secs(converged)
            );
            Ok(vec![
                format!("last set kept while cut: {known:?}"),
                format!("matched etcd {} after reconnecting", secs(converged)),
            ])
        })
        .await?,
    );
    cluster.compose(&["start", "user-rpc-1"], minute).await?;
    cluster.until_view(&all, 2 * minute).await?;

    // d: user-rpc-3 cut off silently from the data network, its lease kept on the control one.
    let instance = cluster.container("user-rpc-3").await?;
    let data = cluster.network("data");
    faults.push(
        under_load(&cluster, "d (user-rpc-3 cut off silently)", async {
            let cut = Instant::now();
            cluster
                .docker(&["network", "disconnect", &data, &instance], minute)
                .await?;
            let bound = KEEPALIVE + Duration::from_secs(6);
            let gone = loop {
                let (_, picked) = cluster.view().await?;
                if !picked.contains("user-rpc-3-data:8080") {
                    break cut.elapsed();
                }
                ensure!(
                    cut.elapsed() < bound,
                    "user-rpc-3 still picked {bound:?} after it was cut off"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let registered = cluster.registered("etcd-3").await?;
            ensure!(
                registered.contains("user-rpc-3-data:8080"),
                "user-rpc-3's registration lapsed: {registered:?}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(vec![format!(
                "out of the picker {} after the cut (keepalives {})",
                secs(gone),
                secs(KEEPALIVE)
            )])
        })
        .await?,
    );
    cluster
        .docker(
            &[
                "network",
                "connect",
                "--alias",
                "user-rpc-3-data",
                &data,
                &instance,
            ],
            minute,
        )
        .await?;
    cluster.compose(&["restart", "user-rpc-3"], minute).await?;
    cluster.until_view(&all, 2 * minute).await?;

    // e: an etcd member lost and back; an instance leaves and returns meanwhile.
    faults.push(
        under_load(&cluster, "e (etcd-1 stopped, started)", async {
            cluster.compose(&["stop", "etcd-1"], minute).await?;
            cluster.compose(&["stop", "user-rpc-2"], minute).await?;
            let left = cluster.until_matches_etcd(minute).await?;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-2"], minute).await?;
            cluster.until_view(&all, minute).await?;
            let back = start.elapsed();
            cluster.compose(&["start", "etcd-1"], minute).await?;
            let member = cluster.container("etcd-1").await?;
            let start = Instant::now();
            while cluster
                .docker(
                    &[
                        "exec",
                        &member,
                        "etcdctl",
                        "--endpoints=http://127.0.0.1:2379",
                        "endpoint",
                        "health",
                    ],
                    minute,
                )
                .await
                .is_err()
            {
                ensure!(start.elapsed() < 2 * minute, "etcd-1 not healthy again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(vec![
                format!("user-rpc-2's leaving matched {} after `stop`", secs(left)),
                format!("its return {} after `start`", secs(back)),
                format!("etcd-1 healthy {} after start", secs(start.elapsed())),
            ])
        })
        .await?,
    );

    let ui = support::get(&cluster.gateway(), "/debug/switchboard/ui").await?;
    ensure!(
        ui.status == 200 && ui.content_type.starts_with("text/html"),
        "/debug/switchboard/ui: {} {}",
        ui.status,
        ui.content_type
    );
    let metrics = support::get(&cluster.gateway(), "/metrics").await?;
    ensure!(
        metrics.status == 200
            && metrics
                .body
                .contains("switchboard_instance_calls_started_total"),
        "/metrics: {} {:.200}",
        metrics.status,
        metrics.body
    );

    println!("\ncompose_cluster: summary");
    println!("  image build                 {}", secs(build));
    println!("  up -d to first 200          {}", secs(first));
    println!(
        "  {:<38} {:>8} {:>8}  failures by status",
        "fault", "requests", "failed"
    );
    for fault in &faults {
        println!(
            "  {:<38} {:>8} {:>8}  {}",
            fault.name,
            fault.counts.requests(),
            fault.counts.failed(),
            fault.counts.failures()
        );
        for time in &fault.times {
            println!("  {:<38} {time}", "");
        }
    }
    let failed: u64 = faults.iter().map(|f| f.counts.failed()).sum();
    ensure!(failed == 0, "{failed} requests failed under the faults");
    cluster.passed = true;
    Ok(())
}
