//! Where RPCs go: each policy against real tonic servers on 127.0.0.1.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;
use switchboard_balancer::{
    Balancer, ChannelSnapshot, ConnectivityState, PickFirstOptions, Policy,
};
use switchboard_resolver::Update;
use switchboard_testkit::TestServer;
use switchboard_tests::balancing::{
    balance_over, balancer as start_balancer, call, client, instance, send, servers, wait_ready,
    wait_snapshot,
};
use switchboard_tests::init_tracing;

const T: Duration = Duration::from_secs(10);

async fn counts(balancer: &Balancer, calls: usize) -> Result<BTreeMap<String, usize>> {
    let mut client = client(balancer);
    let mut counts = BTreeMap::new();
    for _ in 0..calls {
        *counts.entry(call(&mut client, T).await?).or_default() += 1;
    }
    Ok(counts)
}

/// A server named `name` on the port of `addr` again.
async fn start_again(name: &str, addr: &str) -> Result<TestServer> {
    let port = addr
        .rsplit_once(':')
        .map_or(0, |(_, p)| p.parse().unwrap_or(0));
    TestServer::start_on(name, port).await
}

#[tokio::test]
async fn round_robin_spreads_calls_evenly_over_three_instances() -> Result<()> {
    init_tracing();
    let servers = servers(&["a", "b", "c"]).await?;
    let (_publisher, balancer) = balance_over(Balancer::builder(), &servers).await?;
    wait_ready(&balancer, 3).await?;
    assert_eq!(balancer.state(), ConnectivityState::Ready);

    let counts = counts(&balancer, 301).await?;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert!(
            (100..=101).contains(n),
            "{name} served {n} of 301: {counts:?}"
        );
    }
    for server in &servers {
        assert_eq!(server.served() as usize, counts[server.name()]);
    }
    let snapshot = balancer.snapshot();
    let started: u64 = snapshot.subchannels.iter().map(|s| s.calls_started).sum();
    let succeeded: u64 = snapshot.subchannels.iter().map(|s| s.calls_succeeded).sum();
    assert_eq!((started, succeeded), (301, 301), "{snapshot:#?}");
    assert!(
        snapshot
            .subchannels
            .iter()
            .all(|s| s.in_flight == 0 && s.calls_failed == 0)
    );
    Ok(())
}

#[tokio::test]
async fn a_new_instance_takes_traffic_in_the_next_pick_cycle_once_ready() -> Result<()> {
    init_tracing();
    let servers = servers(&["a", "b", "c"]).await?;
    let (publisher, balancer) = start_balancer(Balancer::builder())?;
    let two = servers[..2]
        .iter()
        .map(|s| instance(s.name(), s.addr()))
        .collect();
    send(&publisher, Update::Reset(two)).await?;
    wait_ready(&balancer, 2).await?;
    counts(&balancer, 10).await?;

    send(&publisher, Update::Add(instance("c", servers[2].addr()))).await?;
    wait_ready(&balancer, 3).await?;
    let cycle = counts(&balancer, 3).await?;
    assert_eq!(
        cycle.get("c"),
        Some(&1),
        "one round-robin cycle includes the new instance: {cycle:?}"
    );
    Ok(())
}

#[tokio::test]
async fn weighted_round_robin_follows_the_registered_weights() -> Result<()> {
    init_tracing();
    let servers = servers(&["w1", "w2", "w3"]).await?;
    let (publisher, balancer) =
        start_balancer(Balancer::builder().policy(Policy::WeightedRoundRobin))?;
    let weighted = servers
        .iter()
        .zip(1..)
        .map(|(s, w)| {
            instance(s.name(), s.addr())
                .with_metadata([("weight".to_string(), w.to_string())].into())
        })
        .collect();
    send(&publisher, Update::Reset(weighted)).await?;
    wait_ready(&balancer, 3).await?;
    let counts = counts(&balancer, 600).await?;
    for (name, expected) in [("w1", 100), ("w2", 200), ("w3", 300)] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            n.abs_diff(expected) <= 6,
            "{name}: {n}, expected {expected}: {counts:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn pick_first_connects_to_one_instance_and_fails_over_in_order() -> Result<()> {
    init_tracing();
    let mut servers = servers(&["p1", "p2", "p3"]).await?;
    let (_publisher, balancer) =
        balance_over(Balancer::builder().policy(Policy::PickFirst), &servers).await?;
    let p1 = servers[0].addr().to_string();
    let p2 = servers[1].addr().to_string();
    let p3 = servers[2].addr().to_string();
    let untouched = |s: &ChannelSnapshot, addr: &str| {
        s.by_addr(addr)
            .is_some_and(|c| c.state == ConnectivityState::Idle && c.connects == 0)
    };
    wait_snapshot(
        &balancer,
        "p1 READY and picked, p2 and p3 never dialled",
        |s| s.by_addr(&p1).is_some_and(|c| c.in_picker) && untouched(s, &p2) && untouched(s, &p3),
    )
    .await?;
    assert_eq!(
        counts(&balancer, 50).await?,
        BTreeMap::from([("p1".to_string(), 50)])
    );
    assert_eq!(servers[1].connections(), 0, "one connection in all: to p1");
    assert_eq!(servers[2].connections(), 0);

    // p1 goes away: the next in order is dialled and takes over; p3 is still not dialled.
    let first = servers.remove(0);
    let addr = first.addr().to_string();
    first.abort();
    wait_snapshot(&balancer, "p2 picked, p3 never dialled", |s| {
        s.by_addr(&p2).is_some_and(|c| c.in_picker) && untouched(s, &p3)
    })
    .await?;
    assert_eq!(
        counts(&balancer, 50).await?,
        BTreeMap::from([("p2".to_string(), 50)])
    );

    // p1 comes back (same key, same port): pick_first stays with p2 and leaves p1 alone.
    let back = start_again("p1", &addr).await?;
    assert_eq!(
        counts(&balancer, 20).await?,
        BTreeMap::from([("p2".to_string(), 20)])
    );
    let s = balancer.snapshot();
    assert!(
        s.by_addr(&addr)
            .is_some_and(|c| c.state != ConnectivityState::Ready),
        "p1 is not connected again: {s:?}"
    );
    drop(back);
    Ok(())
}

#[tokio::test]
async fn pick_first_kept_warm_sticks_to_one_instance_then_fails_over_in_order() -> Result<()> {
    init_tracing();
    let mut servers = servers(&["p1", "p2", "p3"]).await?;
    let warm = PickFirstOptions {
        keep_warm: true,
        ..PickFirstOptions::default()
    };
    let builder = Balancer::builder()
        .policy(Policy::PickFirst)
        .pick_first(warm);
    let (_publisher, balancer) = balance_over(builder, &servers).await?;
    let p1 = servers[0].addr().to_string();
    let p2 = servers[1].addr().to_string();
    wait_snapshot(&balancer, "three READY, p1 picked", |s| {
        s.ready() == 3 && s.by_addr(&p1).is_some_and(|c| c.in_picker)
    })
    .await?;
    assert_eq!(
        counts(&balancer, 50).await?,
        BTreeMap::from([("p1".to_string(), 50)])
    );

    // p1 goes away: the first READY instance in order takes over, and keeps the traffic.
    let first = servers.remove(0);
    let addr = first.addr().to_string();
    first.abort();
    wait_snapshot(&balancer, "p1 leaves READY and p2 is picked", |s| {
        s.by_addr(&addr)
            .is_some_and(|c| c.state != ConnectivityState::Ready)
            && s.by_addr(&p2).is_some_and(|c| c.in_picker)
    })
    .await?;
    assert_eq!(
        counts(&balancer, 50).await?,
        BTreeMap::from([("p2".to_string(), 50)])
    );

    // p1 comes back (same key, same port): pick-first stays with p2.
    let back = start_again("p1", &addr).await?;
    wait_snapshot(&balancer, "p1 READY again, p2 still picked", |s| {
        s.ready() == 3 && s.by_addr(&p2).is_some_and(|c| c.in_picker)
    })
    .await?;
    assert_eq!(
        counts(&balancer, 20).await?,
        BTreeMap::from([("p2".to_string(), 20)])
    );
    drop(back);
    Ok(())
}

#[tokio::test]
async fn p2c_keeps_calls_away_from_a_slow_instance() -> Result<()> {
    init_tracing();
    let servers = servers(&["fast1", "fast2", "slow"]).await?;
    servers[2].set_delay(Duration::from_millis(200));
    let (_publisher, balancer) =
        balance_over(Balancer::builder().policy(Policy::P2c), &servers).await?;
    wait_ready(&balancer, 3).await?;

    // 16 callers, 50 calls each: the slow instance holds its calls for 200 ms, so its in-flight
    // count stays above the others' and p2c sends it little.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let balancer = balancer.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client(&balancer);
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..50 {
                *seen.entry(call(&mut client, T).await?).or_default() += 1;
            }
            Ok::<_, tonic::Status>(seen)
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (k, v) in task.await?? {
            *total.entry(k).or_default() += v;
        }
    }
    let slow = total.get("slow").copied().unwrap_or(0);
    assert_eq!(total.values().sum::<usize>(), 800);
    assert!(
        slow < 800 / 10,
        "the slow instance got {slow} of 800 calls: {total:?}"
    );
    assert!(total.get("fast1").copied().unwrap_or(0) > 250, "{total:?}");
    assert!(total.get("fast2").copied().unwrap_or(0) > 250, "{total:?}");
    Ok(())
}
