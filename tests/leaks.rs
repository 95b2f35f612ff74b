//! Leaks a gateway's client would show only after hours of churn: one instance registered and
//! deregistered a thousand times under a steady load, while every byte live on the heap is
//! counted (stats_alloc's allocator). The heap is sampled every 25 cycles once the client has
//! dropped the instance again; the growth per cycle is the slope of the least-squares line
//! through those samples, so that a leak of 1 KiB per cycle stands out of the scatter of calls
//! and buffers in flight, which RSS (growing in allocator arenas of several MiB) cannot show.
//!
//! The only test of its binary, so that it runs in a process of its own under any runner, and
//! without a log subscriber (a test harness that captures output keeps it on the heap).

use std::alloc::System;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use switchboard::balancer::ConnectivityState;
use switchboard_testkit::{Etcd, TestServer};
use switchboard_tests::PATIENCE;
use switchboard_tests::census::{Census, growth_per_cycle, heap_bytes};
use switchboard_tests::fleet::{
    CALLERS, PERIOD, PREFIX, SLACK, addrs, connect, drop_client, healthy, one_connection_each,
};
use switchboard_tests::load::{Load, converge, summary};

#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The heap growth per cycle above which the flap fails: a quarter of the 1 KiB per cycle it
/// must catch, several times the slope its scatter fits when nothing leaks.
const LEAK_BOUND: f64 = 256.0;

/// How many flap cycles run, and from which one on the heap is sampled (the first ones warm up
/// pools, maps and caches that then stay).
const CYCLES: u32 = 1_000;
const WARM_UP: u32 = 100;
const SAMPLE_EVERY: u32 = 25;

/// One instance registered and deregistered 1 000 times, as fast as etcd takes it (every tenth
/// time only once the client has it READY): the final state is right, the heap does not grow
/// with the cycles, and tasks and descriptors are back where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_cycle_flap() -> Result<()> {
    ensure!(
        heap_bytes().is_some(),
        "the heap is not counted in this binary"
    );
    let etcd = Etcd::start().await?;
    let servers = healthy(&etcd, "h", 3).await?;
    let flap = TestServer::start("f").await?;
    let ready = addrs(servers.iter().map(|s| s.addr()));
    let mut ports: Vec<u16> = servers.iter().map(|s| s.addr().port()).collect();
    let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    let mut writer = etcd.client().await?;
    let load = Load::start(&users, CALLERS, PERIOD);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = Census::take()?;

    let (key, addr) = (format!("{PREFIX}f"), flap.addr().to_string());
    let in_snapshot = |want: bool| {
        let client = &client;
        let addr = &addr;
        async move {
            let start = Instant::now();
            loop {
                let state = client.balancer().snapshot().by_addr(addr).map(|s| s.state);
                let done = match want {
                    true => state == Some(ConnectivityState::Ready),
                    false => state.is_none(),
                };
                if done {
                    return Ok(());
                }
                ensure!(
                    start.elapsed() < PATIENCE,
                    "the flapping instance is {state:?} after {PATIENCE:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let mut heap = Vec::new();
    for cycle in 1..=CYCLES {
        writer.put(key.as_str(), addr.as_str(), None).await?;
        if cycle.is_multiple_of(10) {
            in_snapshot(true).await?;
        }
        writer.delete(key.as_str(), None).await?;
        if cycle >= WARM_UP && cycle.is_multiple_of(SAMPLE_EVERY) {
            // Each sample in the same state: the instance gone from the client again.
            in_snapshot(false).await?;
            heap.push((cycle, heap_bytes().unwrap_or_default()));
        }
    }
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    let after = Census::settle_to(baseline, SLACK).await?;
    let growth = growth_per_cycle(&heap);
    let (first, last) = (heap[0].1, heap[heap.len() - 1].1);
    println!(
        "flap: heap {:.1} KiB at cycle {WARM_UP}, {:.1} KiB at cycle {CYCLES}: {growth:.1} bytes per cycle \
         (least squares over {} samples; bound {LEAK_BOUND}); baseline {baseline}, after {after}",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        heap.len(),
    );
    ensure!(
        growth < LEAK_BOUND,
        "the heap grows by {growth:.0} bytes per flap cycle: {heap:?}"
    );

    // The final registration stays.
    writer.put(key.as_str(), addr.as_str(), None).await?;
    let registered = Instant::now();
    let mut live = ready.clone();
    live.push(addr.clone());
    converge(&client, &etcd, PREFIX, &live, PATIENCE).await?;
    let converged = registered.elapsed();
    let served = load.served_by("f");
    load.wait_served("f", served, 20).await?;
    let report = load.finish().await?;
    ports.push(flap.addr().port());
    one_connection_each(&ports).await?;
    drop(writer);
    drop_client(client, users, &ports).await?;
    drop((servers, flap));
    summary("flap-1000", &report, converged)
}
